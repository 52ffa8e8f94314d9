"""The adapter spec (method + placement + hyper-parameters) and the paper's named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from llm_adapters.errors import UserError

from .registry import METHODS, Method, get_method


@dataclass(frozen=True)
class AdapterSpec:
    """What adapter to attach, where, and with which hyper-parameters. Fields a method does not use are ignored
    (`llm-adapters methods` lists the fields each method uses)."""

    method: str = field(metadata={"help": f"one of {', '.join(METHODS)}, or peft:<type> (any PEFT tuner of Linear "
                                          "modules, e.g. peft:vera)"})
    placement: Union[str, tuple[str, ...]] = field(
        default="default",
        metadata={"help": "attn, mlp, attn+mlp, comma-separated module names, or 'default' (the paper's best)"},
    )
    r: int = field(default=8, metadata={"help": "LoRA-family rank"})
    alpha: float = field(default=16, metadata={"help": "LoRA-family alpha (scale = alpha / r; rslora: / sqrt(r))"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA-family dropout on the adapter input, in [0, 1)"})
    bottleneck_size: int = field(default=256, metadata={"help": "Series/Parallel bottleneck width"})
    non_linearity: str = field(default="tanh", metadata={
        "help": "Series/Parallel activation (a transformers ACT2FN key)"})
    adapter_dropout: float = field(default=0.0, metadata={
        "help": "Series/Parallel dropout on the adapter's input, in [0, 1)"})
    scaling: Union[float, str] = field(default=1.0, metadata={"help": "Series/Parallel output scale, or 'learned'"})
    init: str = field(default="zeros", metadata={"help": "Series/Parallel init: zeros (identity at start) or paper"})
    series_side: str = field(default="output", metadata={"help": "Series: adapt the module's output or its input"})
    num_virtual_tokens: int = field(default=10, metadata={"help": "prefix/prompt/ptuning virtual tokens"})
    prefix_projection: bool = field(default=False, metadata={"help": "prefix: reparameterise through an MLP"})
    peft_options: dict = field(default_factory=dict, metadata={
        "help": "peft:<type>: fields of that PEFT config, e.g. {r: 16, vera_dropout: 0.1} (validated by PEFT)"})

    def __post_init__(self) -> None:
        if isinstance(self.placement, list):
            object.__setattr__(self, "placement", tuple(self.placement))
        if isinstance(self.scaling, str) and self.scaling != "learned":
            try:
                object.__setattr__(self, "scaling", float(self.scaling))
            except ValueError:
                pass  # reported by the method's checks
        problems = list(_problems(self))
        if problems:
            raise UserError("; ".join(problems))

    @property
    def method_record(self) -> Method:
        return get_method(self.method)

    @property
    def resolved_placement(self) -> Union[str, tuple[str, ...]]:
        """The placement, with `default` replaced by the method's (`input` for prompt learning)."""
        return self.method_record.default_placement if self.placement == "default" else self.placement

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["placement"] = data["placement"] if isinstance(data["placement"], str) else list(data["placement"])
        return data


def _problems(spec: AdapterSpec):
    try:
        method = get_method(spec.method)
    except UserError as error:
        yield str(error)
        return
    if method.acts_on_input and spec.placement not in ("default", "input"):
        placed = ", ".join(name for name, m in METHODS.items() if not m.acts_on_input)
        yield (f"method {spec.method!r} acts on the input sequence and takes no placement (got {spec.placement!r}); "
               f"placements apply to {placed}")
    if spec.peft_options and "peft_options" not in method.uses:
        yield f"peft_options are for peft:<type> methods, not {spec.method!r}; set its own fields instead"
    yield from method.problems(spec)


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
        UserError: an unknown preset or field, or a bad value (all problems in one message).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    fields = {f.name for f in dataclasses.fields(AdapterSpec)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise UserError(f"unknown spec field(s) {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}")
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; accepted: {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[preset], **overrides)
    if "method" not in overrides:
        raise UserError(f"give a method ({', '.join(METHODS)}) or a preset ({', '.join(PRESETS)})")
    return AdapterSpec(**overrides)


def resolve_spec(spec: AdapterSpec | str | dict[str, Any]) -> AdapterSpec:
    """An AdapterSpec from a spec, a preset or method name, or a dict of fields (with an optional `preset`)."""
    if isinstance(spec, AdapterSpec):
        return spec
    if isinstance(spec, str):
        return make_spec(spec) if spec in PRESETS else make_spec(method=spec)
    if not isinstance(spec, dict):
        raise UserError(f"an adapter is a preset, a method name or a mapping of spec fields, got {spec!r}")
    fields = dict(spec)
    return make_spec(fields.pop("preset", None), **fields)
