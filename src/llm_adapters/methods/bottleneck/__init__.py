"""The bottleneck adapter family (Series, Parallel) as a PEFT method, registered under the PEFT type BOTTLENECK.

Importing this package registers the method; a process that loads a saved bottleneck adapter must have run
`import llm_adapters` first (PEFT otherwise fails with KeyError: 'BOTTLENECK').
"""
from __future__ import annotations

from peft.utils import PeftType, register_peft_method

PEFT_TYPE_NAME = "BOTTLENECK"


def extend_peft_type_enum(name: str) -> PeftType:
    """Add `name` to PEFT's closed `PeftType` enum (idempotent) and return the member.

    Why: peft 0.21's `register_peft_method` only accepts names already in `PeftType`, and the enum offers no
    public way to add one, so we add a member the way `enum` itself does at class creation. A test saves and
    reloads an adapter in a fresh process to notice if a peft or Python upgrade breaks this.
    """
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    type.__setattr__(PeftType, name, member)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    return member


PEFT_TYPE = extend_peft_type_enum(PEFT_TYPE_NAME)

from .config import BottleneckConfig  # noqa: E402  (needs PEFT_TYPE)
from .layer import BottleneckLayer  # noqa: E402
from .model import BottleneckModel  # noqa: E402


def _register() -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    if PEFT_TYPE not in PEFT_TYPE_TO_CONFIG_MAPPING:  # importing twice (e.g. a reload) must not fail
        register_peft_method(name=PEFT_TYPE_NAME.lower(), config_cls=BottleneckConfig, model_cls=BottleneckModel,
                             prefix=BottleneckModel.prefix)


_register()

__all__ = ["PEFT_TYPE", "BottleneckConfig", "BottleneckLayer", "BottleneckModel", "extend_peft_type_enum"]
