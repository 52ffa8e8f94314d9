"""The adapter spec (method + placement + hyper-parameters) and the paper's named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from transformers.activations import ACT2FN


METHODS: dict[str, str] = {
    # name: paper name
    "lora": "LoRA (Hu et al. 2021)",
    "dora": "DoRA (Liu et al. 2024)",
    "series": "Series adapter, AdapterH/AdapterP (Houlsby et al. 2019; Pfeiffer et al. 2021)",
    "parallel": "Parallel adapter (He et al. 2022)",
    "prefix": "Prefix-tuning (Li & Liang 2021)",
    "prompt": "Prompt tuning (Lester et al. 2021)",
    "ptuning": "P-tuning (Liu et al. 2021)",
    "ia3": "(IA)^3 (Liu et al. 2022)",
}
PROMPT_LEARNING = ("prefix", "prompt", "ptuning")
# The paper's best placement per method (RQ1), used when none is given.
DEFAULT_PLACEMENT = {"lora": "attn+mlp", "dora": "attn+mlp", "ia3": "attn+mlp", "series": "mlp", "parallel": "mlp"}


@dataclass(frozen=True)
class AdapterSpec:
    """What adapter to attach, where, and with which hyper-parameters. Fields a method does not use are ignored."""

    method: str = field(metadata={"help": f"one of {', '.join(METHODS)}"})
    placement: Union[str, tuple[str, ...]] = field(
        default="default",
        metadata={"help": "attn, mlp, attn+mlp, comma-separated module names, or 'default' (the paper's best)"},
    )
    r: int = field(default=8, metadata={"help": "LoRA/DoRA rank"})
    alpha: float = field(default=16, metadata={"help": "LoRA/DoRA alpha (scale = alpha / r)"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA/DoRA dropout on the adapter input, in [0, 1)"})
    bottleneck_size: int = field(default=256, metadata={"help": "Series/Parallel bottleneck width"})
    non_linearity: str = field(default="tanh", metadata={"help": "Series/Parallel activation (a transformers ACT2FN key)"})
    adapter_dropout: float = field(default=0.0, metadata={"help": "Series/Parallel dropout, in [0, 1)"})
    scaling: Union[float, str] = field(default=1.0, metadata={"help": "Series/Parallel output scale, or 'learned'"})
    init: str = field(default="zeros", metadata={"help": "Series/Parallel init: zeros (identity at start) or paper"})
    series_side: str = field(default="output", metadata={"help": "Series: adapt the module's output or its input"})
    num_virtual_tokens: int = field(default=10, metadata={"help": "prefix/prompt/ptuning virtual tokens"})
    prefix_projection: bool = field(default=False, metadata={"help": "prefix: reparameterise through an MLP"})

    def __post_init__(self) -> None:
        if isinstance(self.placement, list):
            object.__setattr__(self, "placement", tuple(self.placement))
        if isinstance(self.scaling, str) and self.scaling != "learned":
            try:
                object.__setattr__(self, "scaling", float(self.scaling))
            except ValueError:
                pass  # reported by _problems
        problems = list(_problems(self))
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def resolved_placement(self) -> Union[str, tuple[str, ...]]:
        if self.placement == "default":
            return DEFAULT_PLACEMENT.get(self.method, "input")
        return self.placement

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["placement"] = data["placement"] if isinstance(data["placement"], str) else list(data["placement"])
        return data


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _problems(spec: AdapterSpec):
    if spec.method not in METHODS:
        yield f"unknown method {spec.method!r}; accepted: {', '.join(METHODS)}"
        return
    if spec.method in PROMPT_LEARNING and spec.placement not in ("default", "input"):
        yield (f"method {spec.method!r} acts on the input sequence and takes no placement (got {spec.placement!r}); "
               f"placements apply to {', '.join(DEFAULT_PLACEMENT)}")
    if spec.method in ("lora", "dora"):
        if not _positive_int(spec.r):
            yield f"r must be a positive integer, got {spec.r!r}"
        if not isinstance(spec.alpha, (int, float)) or spec.alpha <= 0:
            yield f"alpha must be a positive number, got {spec.alpha!r}"
        if not isinstance(spec.dropout, (int, float)) or not 0 <= spec.dropout < 1:
            yield f"dropout must be in [0, 1), got {spec.dropout!r}"
    if spec.method in ("series", "parallel"):
        if not _positive_int(spec.bottleneck_size):
            yield f"bottleneck_size must be a positive integer, got {spec.bottleneck_size!r}"
        if spec.non_linearity not in ACT2FN:
            yield f"unknown activation {spec.non_linearity!r}; accepted: {', '.join(sorted(ACT2FN))}"
        if not isinstance(spec.adapter_dropout, (int, float)) or not 0 <= spec.adapter_dropout < 1:
            yield f"adapter_dropout must be in [0, 1), got {spec.adapter_dropout!r}"
        if spec.scaling != "learned" and not isinstance(spec.scaling, (int, float)):
            yield f"scaling must be a number or 'learned', got {spec.scaling!r}"
        if spec.init not in ("zeros", "paper"):
            yield f"init must be zeros or paper, got {spec.init!r}"
        if spec.series_side not in ("output", "input"):
            yield f"series_side must be output or input, got {spec.series_side!r}"
    if spec.method in PROMPT_LEARNING and not _positive_int(spec.num_virtual_tokens):
        yield f"num_virtual_tokens must be a positive integer, got {spec.num_virtual_tokens!r}"


# The paper's optimal configurations (original-system.md A.4); the placement resolves per architecture.
PRESETS: dict[str, AdapterSpec] = {
    "paper-lora": AdapterSpec("lora", "attn+mlp", r=32, alpha=64, dropout=0.05),
    "paper-dora": AdapterSpec("dora", "attn+mlp", r=32, alpha=64, dropout=0.05),
    "paper-series": AdapterSpec("series", "mlp", bottleneck_size=256, non_linearity="tanh", scaling=1.0),
    "paper-parallel": AdapterSpec("parallel", "mlp", bottleneck_size=256, non_linearity="tanh", scaling=1.0),
    "paper-prefix": AdapterSpec("prefix", num_virtual_tokens=10),
}


def make_spec(preset: str | None = None, **overrides: Any) -> AdapterSpec:
    """A spec from a preset name and/or field overrides (None values are ignored).

    Raises:
        ValueError: an unknown preset or field, or a bad value (all problems in one message).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(AdapterSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown spec field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[preset], **overrides)
    if "method" not in overrides:
        raise ValueError(f"give a method ({', '.join(METHODS)}) or a preset ({', '.join(PRESETS)})")
    return AdapterSpec(**overrides)
