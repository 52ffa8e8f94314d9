"""The adapter family: `attach(model, spec)`, `load_adapter(model, dir)`, `save_adapter`, `count_parameters`.

Each method is a record in `registry.METHODS` (LoRA and its variants, DoRA, (IA)^3 and the prompt-learning
methods come from PEFT; Series and Parallel adapters are our `bottleneck` PEFT method, registered on import; any
other PEFT tuner of Linear modules is `peft:<type>`). Every result is a PEFT model that saves as
`adapter_config.json` + `adapter_model.safetensors`.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from torch import nn

from llm_adapters.errors import MissingInputError, UserError

from . import placement as placement_table
from .generation import fix_prompt_learning_generation
from .registry import METHODS, Method, get_method, methods_table, peft_types
from .spec import PRESETS, AdapterSpec, make_spec, resolve_spec
from llm_adapters.models import TINY_MODELS

__all__ = ["AdapterSpec", "METHODS", "Method", "PRESETS", "adapter_folder", "adapter_identity", "attach", "build_peft_config",
           "count_parameters", "get_method", "load_adapter", "make_spec", "methods_table", "peft_types",
           "resolve_spec", "save_adapter"]


def build_peft_config(model: nn.Module, spec: AdapterSpec) -> PeftConfig:
    """The PEFT config that realises `spec` on `model`'s architecture (placement resolved to module names)."""
    method = spec.method_record
    roles = {} if method.acts_on_input else placement_table.resolve(model, method.placements,
                                                                    spec.resolved_placement)
    conv1d = placement_table.model_type(model) == "gpt2"  # GPT-2's Conv1D stores weights transposed
    if conv1d and not method.conv1d:
        raise UserError(f"method {method.name!r} does not support GPT-2's Conv1D layers (PEFT's initialisation "
                        "assumes nn.Linear weights); use lora, pissa or another method on this model")
    return method.build(spec, roles, conv1d)


def attach(model: nn.Module, spec: AdapterSpec | str | dict[str, Any], adapter_name: str = "default") -> PeftModel:
    """Put the adapter described by `spec` into `model`; only the adapter's parameters are trainable.

    PiSSA and OLoRA rewrite the base weights they target at initialisation (the base keeps W - BA); save such an
    adapter with `save_adapter(..., initial=...)` so that it loads onto the untouched base.

    Args:
        model: a Hugging Face causal LM (or a PeftModel, to add another named adapter).
        spec: an AdapterSpec, a preset (`paper-lora`) or method name (`series`), or a dict of spec fields.
        adapter_name: the adapter's name; several can live in one model (`set_adapter` switches).

    Raises:
        UserError: an unknown method, placement or module, or a bad hyper-parameter.

    Example:
        >>> peft_model = attach(model, "paper-lora")
    """
    spec = resolve_spec(spec)
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = build_peft_config(base, spec)
    try:
        if isinstance(model, PeftModel):
            model.add_adapter(adapter_name, config)
            return model
        peft_model = get_peft_model(model, config, adapter_name=adapter_name)
    except (ValueError, RuntimeError) as error:
        # PEFT checks a tuner's options against the model only as it builds the layers (a block size that does
        # not divide a layer, a rank too large, a negative size): the user's options, not our bug. Our own
        # methods' errors stay tracebacks, except PEFT's ValueErrors.
        if not (spec.method.startswith("peft:") or isinstance(error, ValueError)):
            raise
        options = spec.peft_options if spec.method.startswith("peft:") else {
            k: v for k, v in spec.to_dict().items() if k in spec.method_record.uses}
        raise UserError(f"{spec.method} with options {options or '{} (its defaults)'} cannot be attached to "
                        f"{type(base).__name__}: PEFT says: {str(error).splitlines()[0]}") from error
    if getattr(model, "name_or_path", None) in TINY_MODELS:
        # A built-in test model is no hub id: recorded as one, PEFT would look it up on the hub at every save.
        peft_model.peft_config[adapter_name].base_model_name_or_path = None
    return fix_prompt_learning_generation(peft_model)


def save_adapter(peft_model: PeftModel, folder: str | Path, initial: str | Path | None = None) -> None:
    """Save the adapter (safetensors). `initial`: where the adapter was saved right after `attach`, for methods
    that rewrite the base weights (PiSSA, OLoRA): the saved adapter is then the difference to that state, a plain
    LoRA of rank 2r that loads onto the untouched base (PEFT's weight conversion)."""
    # Our placements never adapt the embeddings: PEFT need not check (on the hub) whether the vocabulary grew.
    if initial is not None:
        peft_model.save_pretrained(str(folder), path_initial_model_for_weight_conversion=str(initial),
                                   save_embedding_layers=False)
    else:
        peft_model.save_pretrained(str(folder), save_embedding_layers=False)


def load_adapter(model: nn.Module, adapter_dir: str | Path, *, is_trainable: bool = False,
                 adapter_name: str = "default", base_model: str | None = None,
                 allow_base_mismatch: bool = False) -> PeftModel:
    """Load a saved adapter (ours or any PEFT adapter) onto `model`, in eval mode unless trainable.

    Args:
        base_model: the name or folder `model` was loaded from; given, an adapter trained on another base (its
            manifest's base identity, else its config's `base_model_name_or_path`) is refused.
        allow_base_mismatch: load it anyway.

    Raises:
        UserError: no adapter there, one trained on another base model, or one PEFT cannot load.
    """
    folder = Path(adapter_dir)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{folder} holds no adapter (no adapter_config.json)")
    if base_model is not None and not allow_base_mismatch:
        trained_on = _trained_base(folder)
        if trained_on is not None and not _same_base(trained_on, base_model):
            raise UserError(f"the adapter in {folder} was trained on {trained_on}, not on {base_model!r}; pass "
                            "--allow-base-mismatch to evaluate it on this base anyway")
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=is_trainable,
                                               adapter_name=adapter_name)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"cannot load the adapter in {folder}: {str(error).splitlines()[0]}") from error
    fix_prompt_learning_generation(peft_model)
    return peft_model if is_trainable else peft_model.eval()


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder of an adapter, fine-tune run or study run folder.

    Raises:
        MissingInputError: none of them holds an adapter_config.json.
    """
    folder = Path(path)
    for candidate in (folder, folder / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise MissingInputError(f"{folder} holds no adapter (no adapter_config.json in it or in {folder / 'adapter'}); "
                            "give an adapter folder, a fine-tune run folder or a study run folder")


def _trained_base(folder: Path) -> dict[str, Any] | str | None:
    """The base an adapter was trained on: our manifest's base identity, else PEFT's recorded name."""
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["base_model"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def _same_base(trained_on: dict[str, Any] | str, base_model: str) -> bool:
    from llm_adapters.models import EMBEDDED, base_identity, cache_dir, same_base

    if isinstance(trained_on, dict):
        return same_base(trained_on, base_identity(base_model))
    if trained_on == base_model:
        return True
    # The embedded model is loaded from its cache folder, which is the name PEFT records.
    where = cache_dir() / "models" / EMBEDDED if base_model == EMBEDDED else Path(base_model).expanduser()
    recorded = Path(trained_on).expanduser()
    return recorded.exists() and where.exists() and recorded.resolve() == where.resolve()


def adapter_identity(model: nn.Module) -> dict[str, Any] | None:
    """What the active adapter is, by content: the sha256 of its weights and of its config (None for a model
    without adapter). Computed from the weights in memory, so a retrained adapter saved in place is a new one."""
    if not isinstance(model, PeftModel):
        return None
    from peft import get_peft_model_state_dict

    name = model.active_adapter
    config = {k: v for k, v in model.peft_config[name].to_dict().items()
              if k not in ("base_model_name_or_path", "revision", "inference_mode")}
    weights = hashlib.sha256()
    state = get_peft_model_state_dict(model, adapter_name=name, save_embedding_layers=False)
    for key, tensor in sorted(state.items()):
        tensor = tensor.detach().contiguous().cpu()
        weights.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        weights.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    text = json.dumps(config, sort_keys=True, default=lambda o: sorted(o) if isinstance(o, set) else str(o))
    return {"method": str(config.get("peft_type")), "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "weights_sha256": weights.hexdigest()}


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable and total (base + trainable) parameters, and percent = 100 * trainable / total (the paper's).

    A PeftModel is counted by PEFT (`get_nb_trainable_parameters`, which counts a 4-bit weight's real size)."""
    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}

