"""llm-adapters: the LLM-Adapters family of adapters on any Hugging Face causal LM, PEFT-native.

Importing the package registers the bottleneck (Series/Parallel) method with PEFT, so that
`PeftModel.from_pretrained` can load such adapters in any process that ran `import llm_adapters`.

Example:
    >>> from llm_adapters import load_model, attach
    >>> model, tokenizer = load_model("tiny-llama")
    >>> peft_model = attach(model, "paper-lora")
"""
from __future__ import annotations

from .methods import (METHODS, PRESETS, AdapterSpec, attach, build_peft_config, count_parameters, load_adapter,
                      make_spec)
from .models import load_model

__version__ = "0.1.0"
__all__ = ["METHODS", "PRESETS", "AdapterSpec", "attach", "build_peft_config", "count_parameters",
           "load_adapter", "load_model", "make_spec"]
