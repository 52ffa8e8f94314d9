"""Placement: where a method goes in a transformer block, resolved per architecture to module names.

Each architecture names four roles: the attention input projections (`qkv`), the attention output projection
(`attn_out`), the MLP's input projection(s) (`mlp_up`) and its output projection (`mlp_down`). A method maps
`attn` / `mlp` to roles (`registry.Method.placements`), following the paper's meaning (LoRA mlp = up and down;
Series mlp = after the MLP output projection; Parallel mlp = beside up and down). Names are suffixes, matched as
PEFT does
(`name == target or name.endswith("." + target)`).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn
from transformers.pytorch_utils import Conv1D

from llm_adapters.errors import UserError

_LLAMA_LIKE = {"qkv": ["q_proj", "k_proj", "v_proj"], "attn_out": ["o_proj"],
               "mlp_up": ["up_proj"], "mlp_down": ["down_proj"]}
ROLES: dict[str, dict[str, list[str]]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "bloom": {"qkv": ["query_key_value"], "attn_out": ["self_attention.dense"],
              "mlp_up": ["dense_h_to_4h"], "mlp_down": ["dense_4h_to_h"]},
    "gptj": {"qkv": ["q_proj", "k_proj", "v_proj"], "attn_out": ["attn.out_proj"],
             "mlp_up": ["fc_in"], "mlp_down": ["fc_out"]},
    "opt": {"qkv": ["q_proj", "k_proj", "v_proj"], "attn_out": ["self_attn.out_proj"],
            "mlp_up": ["fc1"], "mlp_down": ["fc2"]},
    "gpt_neox": {"qkv": ["query_key_value"], "attn_out": ["attention.dense"],
                 "mlp_up": ["dense_h_to_4h"], "mlp_down": ["dense_4h_to_h"]},
    "gpt2": {"qkv": ["attn.c_attn"], "attn_out": ["attn.c_proj"], "mlp_up": ["mlp.c_fc"], "mlp_down": ["mlp.c_proj"]},
}

PLACEMENTS: tuple[str, ...] = ("attn", "mlp", "attn+mlp")  # what each covers per method: registry.Method


def _linear_names(model: nn.Module) -> list[str]:
    """Full names of the base model's Linear/Conv1D layers (an adapter-wrapped layer under its own name)."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, Conv1D)) and "lora_" not in name and "adapter_" not in name:
            names.append(name.removesuffix(".base_layer"))
    return names


def adaptable_module_names(model: nn.Module) -> list[str]:
    """Short names (the last two name parts, deduplicated, in model order) of the Linear/Conv1D layers."""
    return list(dict.fromkeys(".".join(name.split(".")[-2:]) for name in _linear_names(model)))


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def _check_exist(model: nn.Module, targets: Sequence[str], what: str) -> None:
    names = _linear_names(model)
    missing = [t for t in targets if not any(_matches(name, t) for name in names)]
    if missing:
        raise UserError(
            f"{what}: no module named {', '.join(repr(m) for m in missing)} in this "
            f"{model_type(model)} model; its Linear modules are: {', '.join(adaptable_module_names(model))}"
        )


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", type(model).__name__)


def resolve(model: nn.Module, method_roles: dict[str, list[str]], placement: str | Sequence[str]
            ) -> dict[str, list[str]]:
    """Module names for a method at `placement`, grouped by role (explicit names go under "explicit").

    Args:
        model: the base model (for its architecture and to check that the modules exist).
        method_roles: the method's roles per placement (`Method.placements`: attn -> [qkv], mlp -> [...]).
        placement: `attn`, `mlp`, `attn+mlp`, or a list (or comma-separated string) of module names.

    Raises:
        ValueError: an unknown placement, an architecture without a placement table (pass module names), or a
            module name the model does not have; the message lists the model's Linear modules.
    """
    placement = _parse(model, placement)
    if isinstance(placement, list):
        _check_exist(model, placement, f"placement {','.join(placement)}")
        return {"explicit": placement}
    arch = model_type(model)
    if arch not in ROLES:
        raise UserError(
            f"no placement table for architecture {arch!r} (known: {', '.join(ROLES)}); pass module names "
            f"instead, e.g. --placement {','.join(adaptable_module_names(model)[:3])}"
        )
    roles = [role for part in placement.split("+") for role in method_roles[part]]
    resolved = {role: list(ROLES[arch][role]) for role in roles}
    _check_exist(model, [n for names in resolved.values() for n in names], f"placement {placement!r}")
    return resolved


def _parse(model: nn.Module, placement: str | Sequence[str]) -> str | list[str]:
    """A named placement, or a list of module names ("q_proj,v_proj" or a list)."""
    if isinstance(placement, str):
        if placement in PLACEMENTS:
            return placement
        names = [part.strip() for part in placement.split(",") if part.strip()]
    else:
        names = [str(part) for part in placement]
    if len(names) == 1 and "." not in names[0] and names[0] not in _all_names(model):
        raise UserError(
            f"unknown placement {names[0]!r}; accepted: {', '.join(PLACEMENTS)}, or module names of this "
            f"{model_type(model)} model: {', '.join(adaptable_module_names(model))}"
        )
    return names


def _all_names(model: nn.Module) -> set[str]:
    return {part for name, _ in model.named_modules() for part in name.split(".")}
