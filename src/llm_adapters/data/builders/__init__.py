"""Training-set builders, by name: each is a function `build(options, out, overwrite) -> BuildResult` and its
options dataclass (whose fields are the flags of `llm-adapters data build <name>`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llm_adapters.data.builders.base import BuildResult, log_summary
from llm_adapters.data.builders.commonsense import CommonsenseOptions, build_commonsense
from llm_adapters.data.builders.math import MathOptions, build_math
from llm_adapters.data.builders.synthetic import SyntheticOptions, build_synthetic_arithmetic


@dataclass(frozen=True)
class Builder:
    build: Callable[..., BuildResult]
    options: type
    help: str


BUILDERS: dict[str, Builder] = {
    "commonsense": Builder(build_commonsense, CommonsenseOptions,
                           "the Commonsense170K recipe from the training splits present"),
    "math": Builder(build_math, MathOptions, "GSM8K train + MAWPS train + AQuA dev with rationales, in the Math10K "
                                             "format"),
    "synthetic-arithmetic": Builder(build_synthetic_arithmetic, SyntheticOptions,
                                    "seeded one- and two-step word problems (no download)"),
}

__all__ = ["BUILDERS", "BuildResult", "Builder", "CommonsenseOptions", "MathOptions", "SyntheticOptions",
           "build_commonsense", "build_math", "build_synthetic_arithmetic", "log_summary"]

