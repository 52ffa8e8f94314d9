"""Configuration of the bottleneck adapter family (Series and Parallel adapters of LLM-Adapters)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Optional, Union

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
        if isinstance(self.target_modules, list):
            self.target_modules = set(self.target_modules)
        problems = list(_validate(self))
        if problems:
            raise UserError("bad bottleneck config: " + "; ".join(problems))


def _validate(config: BottleneckConfig):
    if config.variant not in VARIANTS:
        yield f"variant {config.variant!r} is not one of {', '.join(VARIANTS)}"
    yield from check_values(config.bottleneck_size, config.non_linearity, config.adapter_dropout, config.scaling,
                            config.init, config.side)


def check_values(bottleneck_size: Any, non_linearity: Any, adapter_dropout: Any, scaling: Any, init: Any,
                 side: Any) -> Iterator[str]:
    """One message per bad value (the adapter spec reports these too, before any config is built)."""
    if isinstance(bottleneck_size, bool) or not isinstance(bottleneck_size, int) or bottleneck_size <= 0:
        yield f"bottleneck_size must be a positive integer, got {bottleneck_size!r}"
    if non_linearity not in ACT2FN:
        yield f"unknown activation {non_linearity!r}; accepted: {', '.join(sorted(ACT2FN))}"
    if isinstance(adapter_dropout, bool) or not isinstance(adapter_dropout, (int, float)) \
            or not 0 <= adapter_dropout < 1:
        yield f"adapter_dropout must be in [0, 1), got {adapter_dropout!r}"
    if scaling != "learned" and (isinstance(scaling, bool) or not isinstance(scaling, (int, float))):
        yield f"scaling must be a number or 'learned', got {scaling!r}"
    if init not in INITS:
        yield f"init must be {' or '.join(INITS)}, got {init!r}"
    if side not in SIDES:
        yield f"series_side must be {' or '.join(SIDES)}, got {side!r}"
