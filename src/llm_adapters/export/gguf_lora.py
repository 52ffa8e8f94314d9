"""A LoRA adapter as a GGUF LoRA file for llama.cpp's `--lora` (what llama.cpp's `convert_lora_to_gguf.py`
writes): `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and per adapted weight
`<gguf name>.lora_a` (r x in) and `<gguf name>.lora_b` (out x r, its rows in llama.cpp's order).

llama.cpp scales every pair by alpha / r, r read from the tensor (`llama_adapter_lora_weight::get_scale`), and by 1
when alpha is 0. PEFT's scale is alpha / r for LoRA and alpha / sqrt(r) for rsLoRA (and per module with rank or
alpha patterns), so the file's alpha is PEFT's scale times r: llama.cpp's own converter writes PEFT's `lora_alpha`,
which is wrong for rsLoRA. Where the modules' ranks or scales differ, one alpha cannot serve them all: each B is
multiplied by its scale and alpha is 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import torch

from llm_adapters.errors import UserError
from llm_adapters.export.llamacpp import gguf_array, llamacpp_architecture, llamacpp_rows, tensor_name

_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraPair:
    """One adapted Linear: its transformers name (`model.layers.0.self_attn.q_proj`), A (r x in), B (out x r)
    and PEFT's scale."""

    module: str
    a: torch.Tensor
    b: torch.Tensor
    scale: float


def pairs_from_model(peft_model: Any) -> list[LoraPair]:
    """The LoRA pairs of a PeftModel's active adapter.

    Raises:
        UserError: a LoRA that llama.cpp cannot hold (DoRA, a LoRA bias, adapted embeddings, Conv1D weights).
    """
    from peft.tuners.lora import LoraLayer

    name = peft_model.active_adapter
    config = peft_model.peft_config[name]
    extra = [field for field in ("modules_to_save", "trainable_token_indices") if getattr(config, field, None)]
    if extra:  # trained weights outside the LoRA pairs: a LoRA file would silently leave them out
        raise UserError(f"the adapter also trains {' and '.join(extra)} ({getattr(config, extra[0])}), which a GGUF "
                        "LoRA file cannot hold; use --format gguf (merged: every trained weight included)")
    pairs = []
    for module_name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if name in getattr(module, "lora_embedding_A", {}):
            raise UserError(f"the adapter adapts the embedding {module_name.removeprefix(_PREFIX)!r}, which a GGUF "
                            "LoRA file cannot hold here; use --format gguf (merged)")
        if name not in module.lora_A:
            continue
        if module.use_dora.get(name):
            raise UserError("a DoRA adapter is not a LoRA (its magnitude vector rescales each weight): llama.cpp has "
                            "no DoRA; use --format gguf (merged, exact)")
        if getattr(module, "fan_in_fan_out", False) or module.lora_B[name].bias is not None:
            raise UserError(f"module {module_name.removeprefix(_PREFIX)!r} has transposed weights or a LoRA bias, "
                            "which a GGUF LoRA file cannot hold; use --format gguf (merged)")
        pairs.append(LoraPair(module_name.removeprefix(_PREFIX), module.lora_A[name].weight.detach(),
                              module.lora_B[name].weight.detach(), float(module.scaling[name])))
    return pairs


def pairs_from_state(config: Any, state: dict[str, torch.Tensor]) -> list[LoraPair]:
    """The LoRA pairs of a (LoraConfig, state dict) such as PEFT's `convert_to_lora` returns; the scale of each is
    its alpha / r (rank and alpha patterns included)."""
    pairs = []
    for key in sorted(k for k in state if k.endswith(".lora_A.weight")):
        module = key.removesuffix(".lora_A.weight")
        short = module.removeprefix(_PREFIX)
        rank = config.rank_pattern.get(short, config.r)
        alpha = config.alpha_pattern.get(short, config.lora_alpha)
        pairs.append(LoraPair(short, state[key], state[f"{module}.lora_B.weight"], alpha / rank))
    return pairs


def file_alpha(pairs: list[LoraPair]) -> float | None:
    """The one alpha under which llama.cpp's alpha / r equals every pair's scale, or None when none does."""
    alphas = {round(p.scale * p.a.shape[0], 6) for p in pairs}
    return alphas.pop() if len(alphas) == 1 else None


def write_lora_gguf(pairs: list[LoraPair], base_config: Any, path: Path, dtype: str, name: str) -> dict[str, Any]:
    """Write LoRA pairs as a GGUF LoRA file for a base of `base_config`'s architecture.

    Returns:
        {"architecture", "pairs", "alpha", "scales_in_b"}: the alpha written, and whether the scales were folded
        into B (alpha 0).

    Raises:
        UserError: an architecture the GGUF export does not write, or no pairs.
    """
    architecture = llamacpp_architecture(base_config, "gguf-lora")
    if not pairs:
        raise UserError("the adapter holds no LoRA pairs on Linear layers: nothing to write")
    alpha = file_alpha(pairs)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha if alpha is not None else 0.0)
    for pair in pairs:
        weight = f"{pair.module}.weight"
        b = pair.b.float().cpu().numpy() * (1.0 if alpha is not None else pair.scale)
        target = tensor_name(architecture, base_config.num_hidden_layers, weight)
        for suffix, array in (("lora_a", pair.a.float().cpu().numpy()),
                              ("lora_b", llamacpp_rows(b, weight, architecture, base_config))):
            data, raw = gguf_array(array, dtype)
            writer.add_tensor(f"{target}.{suffix}", data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": architecture, "pairs": len(pairs), "alpha": alpha if alpha is not None else 0.0,
            "scales_in_b": alpha is None}
