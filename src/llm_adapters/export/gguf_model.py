"""The merged model as one GGUF file, with llama.cpp's tensor names and metadata, for llama.cpp, llama-cpp-python
and Ollama. Written with gguf-py's `GGUFWriter` (llama.cpp's own writer); the names and the q/k row order come
from `llamacpp.py`.

The tokenizer is written as llama.cpp's converter writes a byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen2):
every id's token, its type (special added tokens are control tokens), the merges, the special ids, whether BOS is
added, the chat template. `tokenizer.ggml.pre` (the pre-tokenizer llama.cpp applies) is known for the embedded
model (copied from its GGUF); for another base llama.cpp falls back to its default pre-tokenizer, which it says.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import torch

from llm_adapters.errors import UserError
from llm_adapters.export.llamacpp import FILE_TYPES, gguf_array, llamacpp_architecture, llamacpp_rows, tensor_name


def write_model_gguf(model: torch.nn.Module, tokenizer: Any, path: Path, dtype: str, name: str,
                     pre_tokenizer: str | None = None) -> dict[str, Any]:
    """Write `model` (a transformers causal LM, no adapter) as a GGUF file.

    Args:
        dtype: float32, float16 or bfloat16 for the matrices (vectors stay float32).
        name: general.name.
        pre_tokenizer: tokenizer.ggml.pre, when known.

    Returns:
        {"architecture", "tensors", "pre_tokenizer"}.

    Raises:
        UserError: an architecture, rotary scaling or tokenizer this writer does not support.
    """
    config = model.config
    architecture = llamacpp_architecture(config, "gguf")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hyperparameters(writer, config, architecture)
    writer.add_file_type(FILE_TYPES[dtype])
    _add_tokenizer(writer, tokenizer, config.vocab_size, pre_tokenizer)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    count = 0
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when the file has no output.weight
        array = llamacpp_rows(tensor.detach().float().cpu().numpy(), hf_name, architecture, config)
        data, raw = gguf_array(array, dtype)
        writer.add_tensor(tensor_name(architecture, config.num_hidden_layers, hf_name), data, raw_dtype=raw)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {"architecture": architecture, "tensors": count, "pre_tokenizer": pre_tokenizer}


def _add_hyperparameters(writer: gguf.GGUFWriter, config: Any, architecture: str) -> None:
    """The keys llama.cpp's converter writes for these architectures (TextModel and LlamaModel
    .set_gguf_parameters)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    if architecture == "llama":
        writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _add_tokenizer(writer: gguf.GGUFWriter, tokenizer: Any, vocab_size: int, pre_tokenizer: str | None) -> None:
    """A byte-level BPE tokenizer as llama.cpp's converter writes one (`get_vocab_base`).

    Written here rather than with gguf-py's `BpeVocab`: that marks only tokens outside the base vocabulary as
    control tokens, where llama.cpp's converter (which made the embedded GGUF) marks every special added token.
    """
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    bpe = backend.get("model", {})
    if bpe.get("type") != "BPE" or bpe.get("byte_fallback") or (backend.get("decoder") or {}).get("type") != \
            "ByteLevel":
        raise UserError("--format gguf writes byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen2); this base's "
                        f"tokenizer is a {bpe.get('type')} model{' with byte fallback' if bpe.get('byte_fallback') else ''}"
                        ": export --format hf and convert it with llama.cpp's convert_hf_to_gguf.py")
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        if index not in by_id:  # ids the embedding has and the tokenizer never produces
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.USER_DEFINED)
            continue
        tokens.append(by_id[index])
        types.append(gguf.TokenType.CONTROL if index in added and added[index].special
                     else gguf.TokenType.USER_DEFINED if index in added else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    if pre_tokenizer:
        writer.add_tokenizer_pre(pre_tokenizer)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe.get("merges", [])]
    writer.add_token_merges(merges)
    if not merges:  # a vocabulary of single bytes: transformers' GGUF reader then rebuilds merges from the scores
        writer.add_token_scores([0.0] * len(tokens))
    for kind in ("bos", "eos", "unk", "pad"):
        index = getattr(tokenizer, f"{kind}_token_id", None)
        if index is not None:
            getattr(writer, f"add_{kind}_token_id")(index)
    pre = backend.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    writer.add_add_space_prefix(any(step.get("type") == "ByteLevel" and step.get("add_prefix_space") for step in steps))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id])
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
