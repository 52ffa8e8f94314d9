"""The method registry: one `Method` record per adapter method, the one place that says what a method is.

A record names the method and its paper, says where it goes (module roles per placement, or the input sequence
for prompt learning), which spec fields it uses and how they are checked, how its PEFT config is built, whether it
merges into the base weights, and the two facts training must know (it rewrites the base weights at
initialisation; it needs a call after each optimiser step). Adding a method is adding a record here.

Besides the named methods, every PEFT tuner type that adapts Linear modules is reachable as `peft:<type>`
(`peft:vera`, `peft:loha`, ...): its config fields go in the spec's `peft_options`, PEFT validates them, and the
placement is resolved by our tables like LoRA's.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from peft import (IA3Config, LoraConfig, PeftConfig, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig,
                  TaskType)

from llm_adapters.errors import UserError

from .bottleneck import BottleneckConfig
from .bottleneck.config import check_values

# "AdapterSpec" in the annotations below is spec.py's (not imported here: spec.py imports this registry).
Roles = dict[str, list[str]]  # role (qkv, attn_out, mlp_up, mlp_down, explicit) -> module names
# (spec, module names by role, whether the model stores Linear weights transposed as GPT-2's Conv1D) -> config
ConfigBuilder = Callable[["AdapterSpec", Roles, bool], PeftConfig]
PEFT_PREFIX = "peft:"


@dataclass(frozen=True)
class Method:
    """One adapter method.

    Args:
        name: the name users write (`lora`, `series`, `peft:vera`).
        paper: the paper name and citation.
        placements: placement (`attn`, `mlp`) -> the roles it covers; empty for methods that act on the input
            sequence (prompt learning), which take no placement.
        default_placement: used when the spec says `default` (the paper's best, RQ1).
        build: the PEFT config builder.
        uses: the spec fields the method reads (shown by `llm-adapters methods`; other fields are ignored).
        problems: checks of those fields, one message per problem.
        merges: whether `merge_and_unload` can fold the adapter into the base weights (None: as PEFT's tuner
            does, for `peft:<type>`).
        rewrites_base: initialisation changes the base weights (PiSSA, OLoRA): the adapter is saved as the
            difference to its initial state, so it loads onto the untouched base.
        after_optimizer_step: called as fn(peft_model, step) after each optimiser step, with the 0-based index of
            the step just taken (AdaLoRA's rank budget).
        conv1d: works on GPT-2's transposed Conv1D layers.
        note: what a user should know beyond the paper name.
    """

    name: str
    paper: str
    placements: dict[str, list[str]]
    default_placement: str
    build: ConfigBuilder
    uses: tuple[str, ...]
    problems: Callable[["AdapterSpec"], Iterator[str]] = lambda spec: iter(())
    merges: bool | None = True
    rewrites_base: bool = False
    after_optimizer_step: Callable[[Any, int], None] | None = None
    conv1d: bool = True
    note: str = ""

    @property
    def acts_on_input(self) -> bool:
        """Prompt learning: virtual tokens before the input instead of modules in the blocks."""
        return not self.placements


# --------------------------------------------------------------------------------------------- spec field checks

def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _lora_problems(spec: AdapterSpec) -> Iterator[str]:
    if not _positive_int(spec.r):
        yield f"r must be a positive integer, got {spec.r!r}"
    if not isinstance(spec.alpha, (int, float)) or isinstance(spec.alpha, bool) or spec.alpha <= 0:
        yield f"alpha must be a positive number, got {spec.alpha!r}"
    if not isinstance(spec.dropout, (int, float)) or not 0 <= spec.dropout < 1:
        yield f"dropout must be in [0, 1), got {spec.dropout!r}"


def _bottleneck_problems(spec: AdapterSpec) -> Iterator[str]:
    return check_values(spec.bottleneck_size, spec.non_linearity, spec.adapter_dropout, spec.scaling, spec.init,
                        spec.series_side)


def _virtual_token_problems(spec: AdapterSpec) -> Iterator[str]:
    if not _positive_int(spec.num_virtual_tokens):
        yield f"num_virtual_tokens must be a positive integer, got {spec.num_virtual_tokens!r}"


# --------------------------------------------------------------------------------------------- config builders

def _targets(roles: Roles) -> list[str]:
    return [name for names in roles.values() for name in names]


def _lora(**variant: Any) -> ConfigBuilder:
    def build(spec: AdapterSpec, roles: Roles, conv1d: bool) -> PeftConfig:
        return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=_targets(roles),
                          fan_in_fan_out=conv1d, bias="none", task_type=TaskType.CAUSAL_LM, **variant)
    return build


def _ia3(spec: AdapterSpec, roles: Roles, conv1d: bool) -> PeftConfig:
    feedforward = roles.get("mlp_down", []) if "explicit" not in roles else []
    return IA3Config(target_modules=_targets(roles), feedforward_modules=feedforward, fan_in_fan_out=conv1d,
                     task_type=TaskType.CAUSAL_LM)


def _bottleneck(spec: AdapterSpec, roles: Roles, conv1d: bool) -> PeftConfig:
    return BottleneckConfig(target_modules=_targets(roles), variant=spec.method, side=spec.series_side,
                            bottleneck_size=spec.bottleneck_size, non_linearity=spec.non_linearity,
                            adapter_dropout=spec.adapter_dropout, scaling=spec.scaling, init=spec.init,
                            task_type=TaskType.CAUSAL_LM)


def _prompt_learning(config_cls: type, **extra: Callable[[AdapterSpec], Any]) -> ConfigBuilder:
    def build(spec: AdapterSpec, roles: Roles, conv1d: bool) -> PeftConfig:
        return config_cls(num_virtual_tokens=spec.num_virtual_tokens, task_type=TaskType.CAUSAL_LM,
                          **{name: get(spec) for name, get in extra.items()})
    return build


# --------------------------------------------------------------------------------------------- the named methods

# Roles per placement, following the paper's meaning (LoRA mlp = up and down; Series mlp = after the MLP output
# projection; Parallel mlp = beside up and down). The module names per architecture are in placement.py.
_LORA_ROLES = {"attn": ["qkv"], "mlp": ["mlp_up", "mlp_down"]}
_LORA_USES = ("placement", "r", "alpha", "dropout")
_BOTTLENECK_USES = ("placement", "bottleneck_size", "non_linearity", "adapter_dropout", "scaling", "init")
_NOT_LINEAR = "non-linear: merge_and_unload refuses; unload() and disable_adapter() work"

_NAMED = [
    Method("lora", "LoRA (Hu et al. 2021, arXiv:2106.09685)", _LORA_ROLES, "attn+mlp", _lora(), _LORA_USES,
           _lora_problems),
    Method("dora", "DoRA (Liu et al. 2024, arXiv:2402.09353)", _LORA_ROLES, "attn+mlp", _lora(use_dora=True),
           _LORA_USES, _lora_problems),
    Method("rslora", "rsLoRA (Kalajdzievski 2023, arXiv:2312.03732)", _LORA_ROLES, "attn+mlp",
           _lora(use_rslora=True), _LORA_USES, _lora_problems, note="LoRA scaled by alpha/sqrt(r) instead of alpha/r"),
    Method("pissa", "PiSSA (Meng et al. 2024, arXiv:2404.02948)", _LORA_ROLES, "attn+mlp",
           _lora(init_lora_weights="pissa"), _LORA_USES, _lora_problems, rewrites_base=True,
           note="LoRA initialised from the principal singular components; saved as a plain LoRA of rank 2r"),
    Method("olora", "OLoRA (Büyükakyüz 2024, arXiv:2406.01775)", _LORA_ROLES, "attn+mlp",
           _lora(init_lora_weights="olora"), _LORA_USES, _lora_problems, rewrites_base=True, conv1d=False,
           note="LoRA initialised by a QR decomposition of the weights; saved as a plain LoRA of rank 2r"),
    Method("series", "Series adapter, AdapterH/AdapterP (Houlsby et al. 2019; Pfeiffer et al. 2021)",
           {"attn": ["attn_out"], "mlp": ["mlp_down"]}, "mlp", _bottleneck, (*_BOTTLENECK_USES, "series_side"),
           _bottleneck_problems, merges=False, note=_NOT_LINEAR),
    Method("parallel", "Parallel adapter (He et al. 2022, arXiv:2110.04366)", {"attn": ["qkv"],
           "mlp": ["mlp_up", "mlp_down"]}, "mlp", _bottleneck, _BOTTLENECK_USES, _bottleneck_problems, merges=False,
           note=_NOT_LINEAR),
    Method("ia3", "(IA)^3 (Liu et al. 2022, arXiv:2205.05638)", {"attn": ["qkv"], "mlp": ["mlp_down"]}, "attn+mlp",
           _ia3, ("placement",)),
    Method("prefix", "Prefix-tuning (Li & Liang 2021, arXiv:2101.00190)", {}, "input",
           _prompt_learning(PrefixTuningConfig, prefix_projection=lambda spec: spec.prefix_projection),
           ("num_virtual_tokens", "prefix_projection"), _virtual_token_problems, merges=False),
    Method("prompt", "Prompt tuning (Lester et al. 2021, arXiv:2104.08691)", {}, "input",
           _prompt_learning(PromptTuningConfig), ("num_virtual_tokens",), _virtual_token_problems, merges=False),
    Method("ptuning", "P-tuning (Liu et al. 2021, arXiv:2103.10385)", {}, "input",
           _prompt_learning(PromptEncoderConfig), ("num_virtual_tokens",), _virtual_token_problems, merges=False),
]
METHODS: dict[str, Method] = {method.name: method for method in _NAMED}
# Follow-up papers of this benchmark name MiLoRA (Wang et al. 2024); PEFT 0.21 does not offer it (its MiCA
# initialisation, init_lora_weights="mica", is a different method), so neither do we.
NOT_OFFERED = {"milora": "MiLoRA (Wang et al. 2024) is not offered by PEFT 0.21 (PEFT's 'mica' init is another "
                         "method); use pissa, olora or peft:lora with peft_options"}


# --------------------------------------------------------------------------------------------- peft:<type>

# PEFT types with a target_modules field that do not adapt Linear layers the way our placements assume.
_NOT_LINEAR_TUNERS = {"adaption_prompt", "ln_tuning", "trainable_tokens", "xlora", "poly", "cartridge", "bottleneck"}


def _linear_tuner_configs() -> dict[str, type]:
    """PEFT tuner type name -> config class, for the types reachable as `peft:<type>`."""
    from peft.config import PromptLearningConfig
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    found = {}
    for key, config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        name = str(key.value).lower()
        has_targets = "target_modules" in {f.name for f in dataclasses.fields(config_cls)}
        if has_targets and not issubclass(config_cls, PromptLearningConfig) and name not in _NOT_LINEAR_TUNERS:
            found[name] = config_cls
    return found


def peft_types() -> list[str]:
    """The PEFT tuner types reachable as `peft:<type>`: those that adapt Linear modules."""
    return sorted(_linear_tuner_configs())


def _peft_problems(config_cls: type) -> Callable[[AdapterSpec], Iterator[str]]:
    def problems(spec: AdapterSpec) -> Iterator[str]:
        options = spec.peft_options
        if not isinstance(options, dict):
            yield f"peft_options must be a mapping of {config_cls.__name__} fields, got {options!r}"
            return
        accepted = {f.name for f in dataclasses.fields(config_cls)} - {"target_modules", "task_type", "peft_type"}
        unknown = sorted(set(options) - accepted)
        if unknown:
            yield (f"peft_options {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not "
                   f"{config_cls.__name__} field(s); accepted: {', '.join(sorted(accepted))}")
            return
        try:  # PEFT validates the values (placeholder targets: the real ones depend on the model)
            config_cls(target_modules=["placeholder"], task_type=TaskType.CAUSAL_LM, **options)
        except (ValueError, TypeError, ImportError) as error:  # ImportError: a tuner's own optional package
            yield (f"{spec.method} with options {options or '{} (its defaults)'}: PEFT says: "
                   f"{str(error).splitlines()[0]}")
    return problems


def _adalora_step(peft_model: Any, step: int) -> None:
    peft_model.base_model.update_and_allocate(step)  # AdaLoRA reallocates its rank budget after each step


@functools.lru_cache(maxsize=None)
def _peft_method(name: str) -> Method | None:
    peft_type = name[len(PEFT_PREFIX):].lower()
    config_cls = _linear_tuner_configs().get(peft_type)
    if config_cls is None:
        return None

    def build(spec: AdapterSpec, roles: Roles, conv1d: bool) -> PeftConfig:
        options = dict(spec.peft_options)
        if conv1d and "fan_in_fan_out" in {f.name for f in dataclasses.fields(config_cls)}:
            options.setdefault("fan_in_fan_out", True)
        return config_cls(target_modules=_targets(roles), task_type=TaskType.CAUSAL_LM, **options)

    return Method(name, f"PEFT {config_cls.__name__} (see the PEFT documentation)", _LORA_ROLES, "attn+mlp",
                  build, ("placement", "peft_options"), _peft_problems(config_cls), merges=None,
                  after_optimizer_step=_adalora_step if peft_type == "adalora" else None,
                  note="config fields in peft_options, validated by PEFT" + (
                      "; AdaLoRA's orthogonality regulariser is not added to our loss" if peft_type == "adalora"
                      else ""))


def get_method(name: str) -> Method:
    """The Method record for `name` (a named method or `peft:<type>`).

    Raises:
        UserError: an unknown name, listing the accepted ones.
    """
    if name in METHODS:
        return METHODS[name]
    if isinstance(name, str) and name.startswith(PEFT_PREFIX):
        method = _peft_method(name)
        if method is not None:
            return method
        raise UserError(f"unknown PEFT tuner type {name[len(PEFT_PREFIX):]!r}; accepted after 'peft:': "
                        f"{', '.join(peft_types())}")
    if name in NOT_OFFERED:
        raise UserError(NOT_OFFERED[name])
    raise UserError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}, or peft:<type> for a PEFT tuner "
                    f"type ({', '.join(peft_types()[:6])}, ...)")


def methods_table() -> list[dict[str, Any]]:
    """Every named method as a row (for `llm-adapters methods` and the README): name, paper, placements,
    default placement, the spec fields it uses, whether it merges, note."""
    return [{"name": m.name, "paper": m.paper, "placements": "input sequence" if m.acts_on_input
             else ", ".join([*m.placements, "attn+mlp", "module names"]), "default": m.default_placement,
             "uses": ", ".join(m.uses), "merges": m.merges, "note": m.note} for m in METHODS.values()]

