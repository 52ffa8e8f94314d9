"""The adapter family: method name -> PEFT config, `attach(model, spec)`, `load_adapter(model, dir)`.

LoRA, DoRA, (IA)^3 and the prompt-learning methods come from PEFT; Series and Parallel adapters are our
`bottleneck` PEFT method (registered on import). Every result is a PEFT model that saves as
`adapter_config.json` + `adapter_model.safetensors`.
"""
from __future__ import annotations

from typing import Any

from peft import (IA3Config, LoraConfig, PeftConfig, PeftModel, PrefixTuningConfig, PromptEncoderConfig,
                  PromptTuningConfig, TaskType, get_peft_model)
from torch import nn

from . import placement as placement_table
from .bottleneck import BottleneckConfig
from .generation import fix_prompt_learning_generation
from .spec import DEFAULT_PLACEMENT, METHODS, PRESETS, PROMPT_LEARNING, AdapterSpec, make_spec

__all__ = ["AdapterSpec", "METHODS", "PRESETS", "attach", "build_peft_config", "count_parameters",
           "load_adapter", "make_spec", "resolve_spec"]


def resolve_spec(spec: AdapterSpec | str | dict[str, Any]) -> AdapterSpec:
    """An AdapterSpec from a spec, a preset or method name, or a dict of fields (with an optional `preset`)."""
    if isinstance(spec, AdapterSpec):
        return spec
    if isinstance(spec, str):
        return make_spec(spec) if spec in PRESETS else make_spec(method=spec)
    fields = dict(spec)
    return make_spec(fields.pop("preset", None), **fields)


def build_peft_config(model: nn.Module, spec: AdapterSpec) -> PeftConfig:
    """The PEFT config that realises `spec` on `model`'s architecture (placement resolved to module names)."""
    if spec.method in PROMPT_LEARNING:
        return _prompt_learning_config(spec)
    roles = placement_table.resolve(model, spec.method, spec.resolved_placement)
    targets = [name for names in roles.values() for name in names]
    conv1d = placement_table.model_type(model) == "gpt2"  # GPT-2's Conv1D stores weights transposed
    if spec.method in ("lora", "dora"):
        return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                          use_dora=spec.method == "dora", fan_in_fan_out=conv1d, bias="none",
                          task_type=TaskType.CAUSAL_LM)
    if spec.method == "ia3":
        feedforward = roles.get("mlp_down", []) if "explicit" not in roles else []
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=conv1d,
                         task_type=TaskType.CAUSAL_LM)
    return BottleneckConfig(target_modules=targets, variant=spec.method, side=spec.series_side,
                            bottleneck_size=spec.bottleneck_size, non_linearity=spec.non_linearity,
                            adapter_dropout=spec.adapter_dropout, scaling=spec.scaling, init=spec.init,
                            task_type=TaskType.CAUSAL_LM)


def _prompt_learning_config(spec: AdapterSpec) -> PeftConfig:
    common = dict(num_virtual_tokens=spec.num_virtual_tokens, task_type=TaskType.CAUSAL_LM)
    if spec.method == "prefix":
        return PrefixTuningConfig(prefix_projection=spec.prefix_projection, **common)
    if spec.method == "prompt":
        return PromptTuningConfig(**common)
    return PromptEncoderConfig(**common)


def attach(model: nn.Module, spec: AdapterSpec | str | dict[str, Any], adapter_name: str = "default") -> PeftModel:
    """Put the adapter described by `spec` into `model`; only the adapter's parameters are trainable.

    Args:
        model: a Hugging Face causal LM (or a PeftModel, to add another named adapter).
        spec: an AdapterSpec, a preset (`paper-lora`) or method name (`series`), or a dict of spec fields.
        adapter_name: the adapter's name; several can live in one model (`set_adapter` switches).

    Raises:
        ValueError: an unknown method, placement or module, or a bad hyper-parameter.

    Example:
        >>> peft_model = attach(model, "paper-lora")
    """
    spec = resolve_spec(spec)
    if isinstance(model, PeftModel):
        model.add_adapter(adapter_name, build_peft_config(model.get_base_model(), spec))
        return model
    peft_model = get_peft_model(model, build_peft_config(model, spec), adapter_name=adapter_name)
    return fix_prompt_learning_generation(peft_model)


def load_adapter(model: nn.Module, adapter_dir: str, *, is_trainable: bool = False,
                 adapter_name: str = "default") -> PeftModel:
    """Load a saved adapter (ours or any PEFT adapter) onto `model`, in eval mode unless trainable."""
    try:
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable,
                                               adapter_name=adapter_name)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot load the adapter in {adapter_dir}: {str(error).splitlines()[0]}") from error
    fix_prompt_learning_generation(peft_model)
    return peft_model if is_trainable else peft_model.eval()


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total (base + trainable) parameters, and percent = 100 * trainable / total (the paper's)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}
