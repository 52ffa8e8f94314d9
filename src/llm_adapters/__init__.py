"""llm-adapters: the LLM-Adapters family of adapters on any Hugging Face causal LM, PEFT-native.

The public API: `load_model`, `attach`, `load_adapter`, `count_parameters`, `finetune` (with `load_config`),
`evaluate` (with `EvalConfig`), `run_study` (with `load_study`). Importing the package registers the bottleneck (Series/Parallel) method with PEFT,
so that `PeftModel.from_pretrained` can load such adapters in any process that ran `import llm_adapters`.

Example:
    >>> from llm_adapters import load_model, attach
    >>> model, tokenizer = load_model("tiny-llama")
    >>> peft_model = attach(model, "paper-lora")
"""
from __future__ import annotations

import warnings
from importlib import metadata

# Not ours to fix (PEFT 0.21 with transformers 5.2x): PEFT reads the deprecated `is_gradient_checkpointing` on every
# get_peft_model, and its prefix tuning still passes `past_key_values` (pyproject pins transformers below 5.40,
# which removes it).
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)

try:
    __version__ = metadata.version("llm-adapters")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from .eval import EvalConfig, evaluate  # noqa: E402
from .methods import (METHODS, PRESETS, AdapterSpec, attach, build_peft_config, count_parameters,  # noqa: E402
                      load_adapter, make_spec, save_adapter)
from .models import load_model  # noqa: E402
from .study import load_study, run_study  # noqa: E402
from .train import FinetuneConfig, finetune, load_config  # noqa: E402

__all__ = ["METHODS", "PRESETS", "AdapterSpec", "EvalConfig", "FinetuneConfig", "attach", "build_peft_config",
           "count_parameters", "evaluate", "finetune", "load_adapter", "load_config", "load_model", "load_study",
           "make_spec", "run_study", "save_adapter"]
