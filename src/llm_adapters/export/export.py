"""`export_adapter(config)`: an adapter, merged into its base or as a LoRA file, in the formats other tools run.

- `hf`: `merge_and_unload` (PEFT), then an ordinary transformers folder (config, safetensors, tokenizer,
  generation config) that `AutoModelForCausalLM.from_pretrained` loads without this package;
- `gguf`: the same merged model as `model.gguf` (`gguf_model.py`) and an Ollama `Modelfile`;
- `gguf-lora`: the LoRA pairs as `adapter.gguf` for llama.cpp's `--lora` (`gguf_lora.py`); `--as-lora R` first
  converts another tuner with PEFT's `convert_to_lora`.

Every refusal (a method that cannot merge, an architecture or tokenizer the GGUF writer does not handle, a tuner
that is not a LoRA) is one line, decided before the model loads where the files tell. Each export checks itself:
the merged model's (or converted LoRA's) logits against the adapter model's on two probe prompts, printed and
written into `manifest.json` with the base, the adapter by sha256, the method and the template.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from llm_adapters.data.templates import adds_special_tokens, build_prompt
from llm_adapters.errors import OutputExistsError, UserError
from llm_adapters.export.config import DTYPES, ExportConfig
from llm_adapters.files import atomic_folder, sha256_file, sha256_files, write_json_atomic, write_text_atomic
from llm_adapters.provenance import provenance

MANIFEST, KIND = "manifest.json", "llm-adapters export"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
# What a user gets instead, for the methods that change no weight.
_NOT_A_WEIGHT_CHANGE = {
    "series": "its bottleneck is non-linear (up(act(down(h)))): no change of the weights equals it",
    "parallel": "its bottleneck is non-linear (up(act(down(x)))): no change of the weights equals it",
    "prefix": "it adds keys and values to every layer's attention, not a change of the weights",
    "prompt": "it adds virtual tokens to the input, not a change of the weights",
    "ptuning": "it adds virtual tokens to the input, not a change of the weights",
}
# saved as plain LoRA pairs (PiSSA/OLoRA: of rank 2r; peft:lora is PEFT's own LoRA, whatever its options)
_LORA_AS_SAVED = ("lora", "rslora", "pissa", "olora", "peft:lora")
PROBES = ("What is 12 plus 30? Answer with a number.", "Is the sky blue on a clear day? Answer true or false.")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def method_name(adapter_config: dict[str, Any], manifest: dict[str, Any] | None) -> str:
    """The adapter's method: our manifest's, else read from PEFT's adapter_config.json."""
    if manifest and manifest.get("spec", {}).get("method"):
        return manifest["spec"]["method"]
    peft_type = str(adapter_config.get("peft_type", "")).upper()
    if peft_type == "LORA":
        return "dora" if adapter_config.get("use_dora") else "rslora" if adapter_config.get("use_rslora") else "lora"
    named = {"BOTTLENECK": adapter_config.get("variant", "series"), "IA3": "ia3", "PREFIX_TUNING": "prefix",
             "PROMPT_TUNING": "prompt", "P_TUNING": "ptuning"}
    return named.get(peft_type, f"peft:{peft_type.lower()}")


def _refusal(config: ExportConfig, method: str, folder: Path, base: str) -> str | None:
    """Why this adapter cannot be exported in this format (one line), or None."""
    if method in _NOT_A_WEIGHT_CHANGE:
        return (f"a {method!r} adapter cannot be exported: {_NOT_A_WEIGHT_CHANGE[method]}; it neither merges "
                "into the base nor becomes a LoRA (PEFT's convert_to_lora, behind --as-lora, takes only tuners that "
                f"add a weight change); evaluate it here (llm-adapters evaluate --base-model {base} --adapter "
                f"{folder}) or load it with PEFT")
    if config.format != "gguf-lora":
        return None
    if method in _LORA_AS_SAVED:
        return ("the adapter is already a LoRA: leave out --as-lora" if config.as_lora is not None else None)
    if method == "dora":
        return ("a DoRA adapter is not a LoRA (its magnitude vector rescales each weight) and llama.cpp has no DoRA; "
                "--as-lora cannot help (PEFT 0.21's convert_to_lora drops that vector): use --format gguf "
                "(merged, exact)")
    if method == "ia3":
        return ("an (IA)^3 adapter scales activations, it is not a LoRA, and PEFT cannot convert it: use --format "
                "gguf (merged, exact)")
    if config.as_lora is None:
        return (f"a {method!r} adapter is not a LoRA: pass --as-lora R to convert it (PEFT's convert_to_lora, an "
                "approximation whose error is printed) or use --format gguf (merged, exact)")
    return None


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder that holds something we did not write, or an earlier export without --overwrite."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    earlier = _read_json(out / MANIFEST) if out.is_dir() else None
    if not earlier or earlier.get("kind") != KIND:
        raise OutputExistsError(f"{out} holds files that are not an llm-adapters export; choose another --out "
                                "(nothing there is replaced)")
    if not overwrite:
        raise OutputExistsError(f"{out} holds an earlier export ({earlier.get('format')} of "
                                f"{earlier.get('adapter', {}).get('path')}); pass --overwrite to replace it")


def _dtypes(config: ExportConfig, base: str) -> tuple[str, str]:
    """(the dtype written, the dtype the merge runs in). Written: the one asked for, else the base's own (its
    config's), else float32. The merge runs in the base's own dtype: exact for an fp32 base (the embedded model),
    and a half-precision checkpoint (a 7B) is not doubled in memory."""
    from llm_adapters.models import load_meta

    native = getattr(load_meta(base, config.trust_remote_code).config, "dtype", None)
    name = str(native).removeprefix("torch.") if native is not None else "float32"
    own = name if name in ("float32", "float16", "bfloat16") else "float32"
    return (DTYPES[config.dtype] if config.dtype is not None else own), own


def _probe_logits(model: Any, tokenizer: Any, template: str) -> list[torch.Tensor]:
    """Logits of the probe prompts, one prompt at a time (no padding), in fp32."""
    outputs = []
    with torch.no_grad():
        for text in PROBES:
            prompt = build_prompt(text, template=template, tokenizer=tokenizer)
            batch = tokenizer([prompt], return_tensors="pt", add_special_tokens=adds_special_tokens(template))
            outputs.append(model(**batch.to(next(model.parameters()).device)).logits.float().cpu())
    return outputs


def _largest_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def _pre_tokenizer(base: str) -> str | None:
    """llama.cpp's pre-tokenizer name, where the base came from a GGUF that names it (the embedded model)."""
    import gguf

    from llm_adapters.models import EMBEDDED, embedded_gguf_path

    source = embedded_gguf_path() if base == EMBEDDED else Path(base) if base.endswith(".gguf") else None
    if source is None or not source.is_file():
        return None
    field = gguf.GGUFReader(source).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


def _modelfile(weights: str, template: str | None, adapter: str | None = None) -> str:
    """An Ollama Modelfile: the weights, the adapter's prompt template (`{{ .Prompt }}` for the instruction) and
    greedy decoding, as the evaluation decodes."""
    lines = [f"FROM {weights}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if template in ("original", "alpaca"):
        lines.append(f'TEMPLATE """{build_prompt("{{ .Prompt }}", template=template)}"""')
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def export_adapter(config: ExportConfig) -> dict[str, Any]:
    """Export an adapter (see the module docstring); returns {"folder", "files", "check", ...} (the manifest).

    Raises:
        MissingInputError: no adapter at `config.adapter`.
        OutputExistsError: `config.out` holds other files, or an earlier export without `overwrite`.
        UserError: a method, format, architecture or tokenizer that cannot be exported so (one line each).
    """
    from llm_adapters.methods import adapter_folder, load_adapter
    from llm_adapters.models import base_identity, load_meta, load_model

    folder = adapter_folder(config.adapter)
    adapter_config = _read_json(folder / "adapter_config.json") or {}
    manifest = _read_json(folder / "manifest.json")
    trained = (manifest or {}).get("config", {})
    base = config.base_model or trained.get("base_model") or adapter_config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{folder} does not say which base model it was trained on: pass --base-model")
    method = method_name(adapter_config, manifest)
    refusal = _refusal(config, method, folder, base)
    if refusal:
        raise UserError(refusal)
    if config.format != "hf":  # architecture first: no weights are loaded for a refusal
        from llm_adapters.export.llamacpp import llamacpp_architecture

        llamacpp_architecture(load_meta(base, config.trust_remote_code).config, config.format)
    out = Path(config.out)
    _prepare_out(out, config.overwrite)
    dtype, merge_dtype = _dtypes(config, base)
    template = trained.get("template")
    print(f"[export] {folder} ({method}) on {base} -> {out} as {config.format}, {dtype}", flush=True)

    model, tokenizer = load_model(base, device="cpu", dtype=merge_dtype, trust_remote_code=config.trust_remote_code)
    peft_model = load_adapter(model, folder, base_model=base, allow_base_mismatch=config.allow_base_mismatch)
    reference = _probe_logits(peft_model, tokenizer, template or "original")
    record: dict[str, Any] = {
        "kind": KIND, "format": config.format, "dtype": dtype, "merged_in": merge_dtype, "template": template,
        "base_model": {"name": base, "identity": base_identity(base)},
        "adapter": {"path": str(folder.resolve()), "method": method, "peft_type": adapter_config.get("peft_type"),
                    "sha256": sha256_files([folder / name for name in ADAPTER_FILES if (folder / name).is_file()],
                                           folder)},
    }
    with atomic_folder(out) as staging:
        if config.format == "gguf-lora":
            record.update(_write_lora(config, peft_model, tokenizer, template, reference, staging, dtype, base))
        else:
            record.update(_write_merged(config, peft_model, tokenizer, template, reference, staging, dtype, base))
        record["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        record["provenance"] = provenance(device="cpu", dtype=dtype)
        write_json_atomic(staging / MANIFEST, record)
    difference = record["check"]["max_abs_logit_difference"]
    print(f"[export] check: max |logit difference| against the adapter model on {len(PROBES)} probe prompts: "
          f"{difference:.2e}" + (" (a converted approximation)" if config.as_lora else ""), flush=True)
    print(f"[export] wrote {out}/ ({', '.join([*record['files'], MANIFEST])})", flush=True)
    return {"folder": str(out), **record}


def _write_merged(config: ExportConfig, peft_model: Any, tokenizer: Any, template: str | None,
                  reference: list[torch.Tensor], staging: Path, dtype: str, base: str) -> dict[str, Any]:
    """The merged model: a transformers folder, or model.gguf + Modelfile."""
    try:
        merged = peft_model.merge_and_unload()
    except (ValueError, TypeError, NotImplementedError, AttributeError) as error:
        raise UserError(f"PEFT cannot merge this adapter ({str(error).splitlines()[0]}); evaluate it here with "
                        "llm-adapters evaluate --adapter") from error
    difference = _largest_difference(reference, _probe_logits(merged, tokenizer, template or "original"))
    record: dict[str, Any] = {"check": {"probe_prompts": len(PROBES), "max_abs_logit_difference": difference,
                                        "compared": "merged model against base + adapter"}}
    if config.format == "hf":
        merged.to(getattr(torch, dtype)).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        return record
    from llm_adapters.export.gguf_model import write_model_gguf

    name = f"{Path(base).name}+{Path(config.adapter).resolve().name}"
    record["gguf"] = write_model_gguf(merged, tokenizer, staging / "model.gguf", dtype, name, _pre_tokenizer(base))
    write_text_atomic(staging / "Modelfile", _modelfile("./model.gguf", template))
    return record


def _write_lora(config: ExportConfig, peft_model: Any, tokenizer: Any, template: str | None,
                reference: list[torch.Tensor], staging: Path, dtype: str, base: str) -> dict[str, Any]:
    """adapter.gguf (the LoRA pairs, converted first with --as-lora) and a Modelfile naming the base's GGUF."""
    from llm_adapters.export.gguf_lora import pairs_from_model, write_lora_gguf

    record: dict[str, Any] = {}
    if config.as_lora is None:
        pairs = pairs_from_model(peft_model)
        record["check"] = {"probe_prompts": len(PROBES), "max_abs_logit_difference": _pairs_difference(
            peft_model, pairs, tokenizer, template, reference),
                           "compared": "base + scale x B A of the pairs written against base + adapter"}
    else:
        pairs, difference = _convert_to_lora(peft_model, tokenizer, template, reference, config.as_lora)
        record["as_lora"] = {"rank": config.as_lora}
        record["check"] = {"probe_prompts": len(PROBES), "max_abs_logit_difference": difference,
                           "compared": f"base + the rank-{config.as_lora} LoRA conversion against base + adapter"}
    base_config = peft_model.get_base_model().config
    name = f"{Path(config.adapter).resolve().name} (LoRA for {Path(base).name})"
    record["gguf"] = write_lora_gguf(pairs, base_config, staging / "adapter.gguf", dtype, name)
    base_gguf = _base_gguf(base)
    record["base_gguf"] = base_gguf
    write_text_atomic(staging / "Modelfile", _modelfile(base_gguf or "<the base model's GGUF>", template,
                                                        "./adapter.gguf"))
    return record


def _base_gguf(base: str) -> str | None:
    """A GGUF of the base that the LoRA file applies to, where one is known (the embedded model's own)."""
    from llm_adapters.models import EMBEDDED, embedded_gguf_path

    if base == EMBEDDED:
        return str(embedded_gguf_path())
    return str(Path(base).resolve()) if base.endswith(".gguf") else None


@torch.no_grad()
def _pairs_difference(peft_model: Any, pairs: list[Any], tokenizer: Any, template: str | None,
                      reference: list[torch.Tensor]) -> float:
    """The largest probe logit difference between the adapter model and its base with each written pair's scale x
    B A added to its weight, as llama.cpp applies a LoRA file (the adapter's layers are unloaded: last use)."""
    base = peft_model.unload()
    for pair in pairs:
        weight = base.get_submodule(pair.module).weight
        weight += (pair.scale * pair.b.double() @ pair.a.double()).to(weight.dtype)
    return _largest_difference(reference, _probe_logits(base, tokenizer, template or "original"))


def _convert_to_lora(peft_model: Any, tokenizer: Any, template: str | None, reference: list[torch.Tensor],
                     rank: int) -> tuple[list[Any], float]:
    """PEFT's `convert_to_lora` of the active tuner, and the largest logit difference it leaves on the probes
    (the LoRA loaded onto the base in place of the tuner)."""
    from peft import get_peft_model, set_peft_model_state_dict
    from peft.tuners.lora.conversion import convert_to_lora

    from llm_adapters.export.gguf_lora import pairs_from_state

    try:
        lora_config, state = convert_to_lora(peft_model, rank)
    except (TypeError, ValueError) as error:
        raise UserError(f"PEFT cannot convert this adapter to a LoRA of rank {rank}: "
                        f"{str(error).splitlines()[0]}") from error
    pairs = pairs_from_state(lora_config, state)
    base = peft_model.unload()  # the tuner's layers out, the base's own weights back
    converted = get_peft_model(base, lora_config).eval()
    set_peft_model_state_dict(converted, state)
    return pairs, _largest_difference(reference, _probe_logits(converted, tokenizer, template or "original"))
