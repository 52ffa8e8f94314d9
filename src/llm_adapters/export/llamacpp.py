"""llama.cpp's conventions, the one home for them: which transformers architectures a GGUF export supports and
their llama.cpp names, the GGUF tensor names (gguf-py's own tables, the ones llama.cpp's converter uses), and the
row order llama.cpp's LLaMA graph wants for the query and key projections.

llama.cpp's `llama` graph rotates interleaved pairs of a head's dimensions, transformers' LLaMA rotates its two
halves, so llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders the rows of q and k, and
transformers' GGUF reader reorders them back; Qwen2 runs NeoX-style rotation in llama.cpp, with no reorder.
"""
from __future__ import annotations

import functools
from typing import Any

import gguf
import numpy as np

from llm_adapters.errors import UserError

# transformers model_type -> llama.cpp architecture (llama.cpp's converter writes Mistral as a LlamaModel).
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
_REORDERED = {"llama"}  # llama.cpp architectures whose q/k rows are reordered


def llamacpp_architecture(config: Any, fmt: str) -> str:
    """The llama.cpp architecture of a transformers config.

    Raises:
        UserError: an architecture the GGUF export does not write (naming the ones it does).
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UserError(f"--format {fmt} writes LLaMA-family bases ({', '.join(ARCHITECTURES)}); this base is "
                        f"{model_type!r}: use --format hf (a transformers folder; llama.cpp's convert_hf_to_gguf.py "
                        "converts the architectures it knows)")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"--format {fmt} writes bases with plain rotary embeddings; this base uses rope_type "
                        f"{rope['rope_type']!r}: use --format hf and llama.cpp's convert_hf_to_gguf.py")
    return ARCHITECTURES[model_type]


@functools.lru_cache(maxsize=None)
def _name_map(architecture: str, n_blocks: int) -> gguf.TensorNameMap:
    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    return gguf.get_tensor_name_map(arch, n_blocks)


def tensor_name(architecture: str, n_blocks: int, hf_name: str) -> str:
    """The GGUF name of a transformers tensor (`model.layers.0.self_attn.q_proj.weight` -> `blk.0.attn_q.weight`).

    Raises:
        UserError: a tensor llama.cpp's tables do not name.
    """
    name = _name_map(architecture, n_blocks).get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise UserError(f"tensor {hf_name!r} has no name in llama.cpp's {architecture} layout; use --format hf")
    return name


def llamacpp_rows(array: np.ndarray, hf_name: str, architecture: str, config: Any) -> np.ndarray:
    """`array` (a weight, a bias or a LoRA B, its rows the projection's outputs) in llama.cpp's row order."""
    if architecture not in _REORDERED:
        return array
    if ".q_proj." in hf_name:
        heads = config.num_attention_heads
    elif ".k_proj." in hf_name:
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    else:
        return array
    # llama.cpp's permute: each head's rows (first half, second half) -> interleaved pairs.
    shape = array.shape
    return array.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def gguf_array(array: np.ndarray, dtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """An fp32 array as GGUF stores it in `dtype` (float32, float16, bfloat16), with the raw type to declare
    (None: numpy's own). Vectors (norms, biases) stay fp32, as llama.cpp's converter keeps them."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or dtype == "float32":
        return array, None
    if dtype == "float16":
        return array.astype(np.float16), None
    return gguf.quants.quantize(array, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


FILE_TYPES = {"float32": gguf.LlamaFileType.ALL_F32, "float16": gguf.LlamaFileType.MOSTLY_F16,
              "bfloat16": gguf.LlamaFileType.MOSTLY_BF16}
