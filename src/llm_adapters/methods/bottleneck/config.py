"""Configuration of the bottleneck adapter family (Series and Parallel adapters of LLM-Adapters)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig
from transformers.activations import ACT2FN

from llm_adapters.errors import UserError

VARIANTS = ("series", "parallel")
SIDES = ("output", "input")
INITS = ("zeros", "paper")


@dataclass
class BottleneckConfig(PeftConfig):
    """A bottleneck adapter A(z) = up(act(down(drop(z)))) around each target Linear, scaled by s.

    series, output side (AdapterP, the paper's "after the MLP"): y = Wx + b; y <- y + s*A(y)
    series, input side (the original's "mh_adapter"):           y = W(x + s*A(x)) + b
    parallel (He et al. 2022, per Linear as in LLM-Adapters):    y = Wx + b + s*A(x)

    Papers: Houlsby et al. 2019 (series), Pfeiffer et al. 2021, He et al. 2022 (parallel), Hu et al. 2023.
    """

    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names (suffix match) or a regex (full match) of the Linears to wrap."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of modules never to wrap."}
    )
    variant: Literal["series", "parallel"] = field(
        default="series", metadata={"help": "series: adapter in the residual stream of the Linear; parallel: beside it."}
    )
    side: Literal["output", "input"] = field(
        default="output", metadata={"help": "series only: adapt the Linear's output (AdapterP) or its input (mh)."}
    )
    bottleneck_size: int = field(default=256, metadata={"help": "Width of the bottleneck (down-projection size)."})
    non_linearity: str = field(default="tanh", metadata={"help": "Activation between down and up: any ACT2FN key."})
    adapter_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input, in [0, 1)."})
    scaling: Union[float, str] = field(
        default=1.0, metadata={"help": "Scale s of the adapter output: a number, or 'learned' (a trained scalar, init 1)."}
    )
    init: Literal["zeros", "paper"] = field(
        default="zeros",
        metadata={"help": "zeros: up-projection zero, the adapted model starts equal to the base; "
                          "paper: both projections N(0, 0.02), as the original."},
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "Extra modules to train and save in full."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from . import PEFT_TYPE  # registered on import of the package

        self.peft_type = PEFT_TYPE
        self.target_modules = set(self.target_modules) if isinstance(self.target_modules, list) else self.target_modules
        problems = list(_validate(self))
        if problems:
            raise UserError("bad bottleneck config: " + "; ".join(problems))


def _validate(config: BottleneckConfig):
    if config.variant not in VARIANTS:
        yield f"variant {config.variant!r} is not one of {', '.join(VARIANTS)}"
    if config.side not in SIDES:
        yield f"side {config.side!r} is not one of {', '.join(SIDES)}"
    if isinstance(config.bottleneck_size, bool) or not isinstance(config.bottleneck_size, int) or config.bottleneck_size <= 0:
        yield f"bottleneck_size must be a positive integer, got {config.bottleneck_size!r}"
    if config.non_linearity not in ACT2FN:
        yield f"non_linearity {config.non_linearity!r} is unknown; accepted: {', '.join(sorted(ACT2FN))}"
    if not isinstance(config.adapter_dropout, (int, float)) or not 0 <= config.adapter_dropout < 1:
        yield f"adapter_dropout must be in [0, 1), got {config.adapter_dropout!r}"
    if config.scaling != "learned" and (isinstance(config.scaling, bool) or not isinstance(config.scaling, (int, float))):
        yield f"scaling must be a number or 'learned', got {config.scaling!r}"
    if config.init not in INITS:
        yield f"init {config.init!r} is not one of {', '.join(INITS)}"
