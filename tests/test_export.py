"""`llm-adapters export`: the merged model equals the adapter model, GGUF files read back as llama.cpp and
transformers read them, GGUF LoRA pairs rebuild the merged weights under llama.cpp's scale rule, refusals are one
line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from llm_adapters.cli import main
from llm_adapters.export import ExportConfig, export_adapter
from llm_adapters.methods import METHODS, attach, load_adapter, save_adapter
from llm_adapters.models import TINY_MODELS, load_model
from helpers import perturb

SRC = Path(__file__).resolve().parents[1] / "src"
TEXTS = ["Add 13 and 4. The answer is 17.", "Is the sky blue? true"]
MERGEABLE = [name for name, method in METHODS.items() if method.merges]
LLAMA_FAMILY = ["tiny-llama", "tiny-mistral", "tiny-qwen2"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _adapter(tmp_path: Path, base: str, spec: Any, name: str = "adapter") -> Path:
    """A saved adapter of `spec` on `base`, moved off its identity start (PiSSA and OLoRA saved as finetune saves
    them: the difference to their initial state, a LoRA of rank 2r for the untouched base)."""
    model, _ = load_model(base)
    peft_model = attach(model, spec)
    initial = None
    if peft_model.peft_config["default"].peft_type == "LORA" and \
            peft_model.peft_config["default"].init_lora_weights in ("pissa", "olora"):
        initial = tmp_path / f"{name}-initial"
        save_adapter(peft_model, initial)
    perturb(peft_model, scale=0.1)
    save_adapter(peft_model, tmp_path / name, initial=initial)
    return tmp_path / name


def _logits(model: Any, tokenizer: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**tokenizer([text], return_tensors="pt")).logits for text in TEXTS]


def _adapter_logits(base: str, folder: Path) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(base + adapter, base alone) logits, the adapter loaded onto a fresh base."""
    model, tokenizer = load_model(base)
    plain = _logits(model, tokenizer)
    return _logits(load_adapter(load_model(base)[0], folder), tokenizer), plain


def _largest(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("base", TINY_MODELS)
@pytest.mark.parametrize("method", MERGEABLE)
def test_export_hf_merged_model_equals_the_adapter_model(tmp_path: Path, base: str, method: str) -> None:
    if base == "tiny-gpt2" and not METHODS[method].conv1d:
        pytest.skip(f"{method} is not offered on GPT-2's Conv1D layers")
    folder = _adapter(tmp_path, base, {"method": method, "r": 4, "alpha": 8} if "r" in METHODS[method].uses
                      else method)
    result = export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "hf"), base_model=base))
    expected, plain = _adapter_logits(base, folder)
    assert _largest(expected, plain) > 1e-3  # the adapter changes the model: the comparison below can fail
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert _largest(_logits(exported, load_model(base)[1]), expected) < 1e-4
    manifest = json.loads((tmp_path / "hf" / "manifest.json").read_text())
    # Without a run's manifest the method is read from adapter_config.json: PiSSA and OLoRA are saved as LoRA.
    assert manifest["adapter"]["method"] == ("lora" if METHODS[method].rewrites_base else method)
    assert manifest["base_model"]["name"] == base
    assert manifest["check"]["max_abs_logit_difference"] < 1e-4 and manifest == {
        k: v for k, v in result.items() if k != "folder"}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= set(
        p.name for p in (tmp_path / "hf").iterdir())


def test_export_hf_loads_in_a_process_without_this_package(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "tiny-llama", {"method": "rslora", "r": 4, "alpha": 8})
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "hf"), base_model="tiny-llama"))
    code = ("import json, sys, torch\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'hf')!r}).eval()\n"
            f"tokenizer = AutoTokenizer.from_pretrained({str(tmp_path / 'hf')!r})\n"
            "assert not any(name.startswith('llm_adapters') or name.startswith('peft') for name in sys.modules)\n"
            "with torch.no_grad():\n"
            f"    print(json.dumps([model(**tokenizer([t], return_tensors='pt')).logits.tolist() for t in {TEXTS!r}]))\n")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}).stdout
    fresh = [torch.tensor(x) for x in json.loads(output.strip().splitlines()[-1])]
    assert _largest(fresh, _adapter_logits("tiny-llama", folder)[0]) < 1e-4


def _gguf_fields(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


@pytest.mark.parametrize("base", LLAMA_FAMILY)
def test_export_gguf_reads_back_with_llamacpp_names_and_our_loader_gives_the_merged_logits(
        tmp_path: Path, base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ADAPTERS_CACHE", str(tmp_path / "cache"))
    folder = _adapter(tmp_path, base, {"method": "lora", "r": 4, "alpha": 8})
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "gguf"), base_model=base, format="gguf"))
    path = tmp_path / "gguf" / "model.gguf"
    model, tokenizer = load_model(base)
    config = model.config
    fields = _gguf_fields(path)
    arch = "qwen2" if base == "tiny-qwen2" else "llama"
    assert fields["general.architecture"] == arch and fields["general.type"] == "model"
    assert (fields[f"{arch}.block_count"], fields[f"{arch}.embedding_length"], fields[f"{arch}.feed_forward_length"],
            fields[f"{arch}.attention.head_count"], fields[f"{arch}.attention.head_count_kv"]) == (
        config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
        config.num_key_value_heads)
    assert fields["tokenizer.ggml.model"] == "gpt2" and len(fields["tokenizer.ggml.tokens"]) == config.vocab_size
    # The tensors llama.cpp's names give for these architectures, each with the transformers weight's shape
    # (GGUF lists dimensions innermost first).
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
    expected = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(config.num_hidden_layers) for name in per_block}
    if base == "tiny-qwen2":
        expected |= {f"blk.{i}.attn_{x}.bias" for i in range(config.num_hidden_layers) for x in "qkv"}
    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}
    assert set(tensors) == expected
    assert tuple(tensors["blk.1.attn_k.weight"].shape) == tuple(reversed(model.model.layers[1].self_attn.k_proj
                                                                         .weight.shape))
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    merged = AutoModelForCausalLM.from_pretrained(_hf(tmp_path, folder, base), dtype=torch.float32).eval()
    reread, reread_tokenizer = load_model(str(path))
    assert reread_tokenizer("Add 13 and 4.")["input_ids"] == tokenizer("Add 13 and 4.")["input_ids"]
    assert _largest(_logits(reread, tokenizer), _logits(merged, tokenizer)) < 1e-4
    assert (tmp_path / "gguf" / "Modelfile").read_text().startswith("FROM ./model.gguf\n")


def _hf(tmp_path: Path, folder: Path, base: str) -> Path:
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "hf"), base_model=base))
    return tmp_path / "hf"


@pytest.mark.parametrize("dtype, kind", [("f16", gguf.GGMLQuantizationType.F16),
                                         ("bf16", gguf.GGMLQuantizationType.BF16)])
def test_export_gguf_half_precision_keeps_vectors_in_f32_and_the_logits_close(
        tmp_path: Path, dtype: str, kind: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_ADAPTERS_CACHE", str(tmp_path / "cache"))
    folder = _adapter(tmp_path, "tiny-llama", {"method": "lora", "r": 4, "alpha": 8})
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "gguf"), base_model="tiny-llama",
                                format="gguf", dtype=dtype))
    tensors = gguf.GGUFReader(tmp_path / "gguf" / "model.gguf").tensors
    assert {t.tensor_type for t in tensors if len(t.shape) == 2} == {kind}
    assert {t.tensor_type for t in tensors if len(t.shape) == 1} == {gguf.GGMLQuantizationType.F32}
    assert _gguf_fields(tmp_path / "gguf" / "model.gguf")["general.file_type"] == (1 if dtype == "f16" else 32)
    reread, tokenizer = load_model(str(tmp_path / "gguf" / "model.gguf"))
    expected = _adapter_logits("tiny-llama", folder)[0]
    assert 0 < _largest(_logits(reread, tokenizer), expected) < 2e-2


def test_export_hf_in_bfloat16_merges_in_the_bases_fp32_and_rounds_once(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "tiny-llama", {"method": "lora", "r": 4, "alpha": 8})
    result = export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "hf"), base_model="tiny-llama",
                                         dtype="bf16"))
    assert (result["dtype"], result["merged_in"]) == ("bfloat16", "float32")
    assert result["check"]["max_abs_logit_difference"] < 1e-4  # the merge itself, before the rounding
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert next(exported.parameters()).dtype == torch.bfloat16
    expected = _adapter_logits("tiny-llama", folder)[0]
    assert 0 < _largest([x.float() for x in _logits(exported, load_model("tiny-llama")[1])], expected) < 5e-2


def _reverse_permute(array: np.ndarray, heads: int) -> np.ndarray:
    """transformers' GGUF reader's undoing of llama.cpp's q/k row order (an implementation that is not ours)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    return LlamaTensorProcessor()._reverse_permute_weights(array, heads, heads)


@pytest.mark.parametrize("base", ["tiny-llama", "tiny-qwen2"])
@pytest.mark.parametrize("spec", [{"method": "lora", "r": 4, "alpha": 8}, {"method": "rslora", "r": 4, "alpha": 8},
                                  {"method": "pissa", "r": 4, "alpha": 8}])
def test_export_gguf_lora_pairs_rebuild_the_merged_weights_under_llamacpps_scale(
        tmp_path: Path, base: str, spec: dict[str, Any]) -> None:
    from transformers.modeling_gguf_pytorch_utils import TensorProcessor, get_gguf_hf_weights_map

    folder = _adapter(tmp_path, base, spec)
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "lora"), base_model=base,
                                format="gguf-lora"))
    path = tmp_path / "lora" / "adapter.gguf"
    fields = _gguf_fields(path)
    arch = "qwen2" if base == "tiny-qwen2" else "llama"
    assert (fields["general.architecture"], fields["general.type"], fields["adapter.type"]) == (arch, "adapter",
                                                                                                   "lora")
    saved = json.loads((folder / "adapter_config.json").read_text())
    r = saved["r"]  # PiSSA: saved as rank 2r
    scale = saved["lora_alpha"] / (r ** 0.5 if spec["method"] == "rslora" else r)  # PEFT's scaling
    alpha = fields["adapter.lora.alpha"]
    assert alpha / r == pytest.approx(scale, rel=1e-6)  # llama.cpp's scale: alpha / rank (llama-adapter.h)
    model, _ = load_model(base)
    names = get_gguf_hf_weights_map(model, TensorProcessor())  # transformers' table: GGUF name -> HF name
    base_weights = model.state_dict()
    merged = load_adapter(load_model(base)[0], folder).merge_and_unload().state_dict()
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    targets = sorted({name.rsplit(".", 1)[0] for name in tensors})
    assert len(targets) == 2 * 5  # q, k, v, up, down in 2 blocks (attn+mlp)
    for target in targets:
        a, b = tensors[f"{target}.lora_a"], tensors[f"{target}.lora_b"]
        assert a.shape[0] == b.shape[1] == r
        hf_name = names[target]
        if arch == "llama" and (".attn_q." in target or ".attn_k." in target):
            heads = model.config.num_attention_heads if ".attn_q." in target else model.config.num_key_value_heads
            b = _reverse_permute(b, heads)
        rebuilt = base_weights[hf_name] + torch.from_numpy((alpha / r) * (b @ a))
        torch.testing.assert_close(rebuilt, merged[hf_name], rtol=0, atol=1e-5)
        assert not torch.allclose(base_weights[hf_name], merged[hf_name], atol=1e-3)


def test_export_gguf_lora_folds_unequal_scales_into_b_with_alpha_zero(tmp_path: Path) -> None:
    folder = _adapter(tmp_path, "tiny-llama", {"method": "peft:lora", "placement": "attn",
                                               "peft_options": {"r": 4, "lora_alpha": 8,
                                                                "rank_pattern": {"k_proj": 2},
                                                                "alpha_pattern": {"k_proj": 16}}})
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "lora"), base_model="tiny-llama",
                                format="gguf-lora", as_lora=None))
    path = tmp_path / "lora" / "adapter.gguf"
    assert _gguf_fields(path)["adapter.lora.alpha"] == 0.0  # llama.cpp then scales by 1 (llama-adapter.h)
    tensors = {t.name: np.array(t.data) for t in gguf.GGUFReader(path).tensors}
    model, _ = load_model("tiny-llama")
    merged = load_adapter(load_model("tiny-llama")[0], folder).merge_and_unload().state_dict()
    rebuilt = model.state_dict()["model.layers.0.self_attn.v_proj.weight"] + torch.from_numpy(
        tensors["blk.0.attn_v.weight.lora_b"] @ tensors["blk.0.attn_v.weight.lora_a"])
    torch.testing.assert_close(rebuilt, merged["model.layers.0.self_attn.v_proj.weight"], rtol=0, atol=1e-5)
    assert tensors["blk.0.attn_k.weight.lora_a"].shape[0] == 2
    rebuilt = model.state_dict()["model.layers.1.self_attn.k_proj.weight"] + torch.from_numpy(_reverse_permute(
        tensors["blk.1.attn_k.weight.lora_b"], model.config.num_key_value_heads) @ tensors["blk.1.attn_k.weight.lora_a"])
    torch.testing.assert_close(rebuilt, merged["model.layers.1.self_attn.k_proj.weight"], rtol=0, atol=1e-5)


def test_export_as_lora_converts_a_tuner_with_peft_and_reports_its_error(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    folder = _adapter(tmp_path, "tiny-llama", {"method": "peft:vera", "peft_options": {"r": 16}})
    result = export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "lora"), base_model="tiny-llama",
                                         format="gguf-lora", as_lora=32))
    assert result["as_lora"] == {"rank": 32}
    # VeRA's weight change is B diag(b) A diag(d) with r = 16: a rank-32 LoRA holds it exactly.
    assert result["check"]["max_abs_logit_difference"] < 1e-4
    assert "max |logit difference| against the adapter model on 2 probe prompts" in capsys.readouterr().out
    tensors = {t.name: t for t in gguf.GGUFReader(tmp_path / "lora" / "adapter.gguf").tensors}
    assert tuple(tensors["blk.0.attn_q.weight.lora_a"].shape) == (64, 32)  # GGUF order: (in, r)


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llm-adapters export: error: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("method", ["series", "parallel", "prefix", "prompt", "ptuning"])
@pytest.mark.parametrize("fmt", ["hf", "gguf", "gguf-lora"])
def test_export_refuses_a_method_that_changes_no_weight_in_one_line(tmp_path: Path, method: str, fmt: str,
                                                                    capsys: pytest.CaptureFixture,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _adapter(tmp_path, "tiny-llama", method)
    monkeypatch.setattr("llm_adapters.models.load_model", lambda *a, **k: pytest.fail("a refusal loads nothing"))
    line = _refused(["export", str(folder), "--out", str(tmp_path / "out"), "--base-model", "tiny-llama",
                     "--format", fmt], capsys)
    assert f"a {method!r} adapter cannot be exported" in line and "llm-adapters evaluate" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, words", [
    (["--format", "gguf"], "writes LLaMA-family bases (llama, mistral, qwen2); this base is 'bloom'"),
    (["--format", "gguf-lora", "--as-lora", "8"], "the adapter is already a LoRA: leave out --as-lora"),
    (["--format", "hf", "--as-lora", "8"], "--as-lora applies to --format gguf-lora"),
    (["--dtype", "int8"], "dtype 'int8' is not one of float32, float16, bfloat16"),
    (["--format", "onnx"], "format 'onnx' is not one of hf, gguf, gguf-lora"),
])
def test_export_refuses_bad_formats_and_flags_in_one_line(tmp_path: Path, argv: list[str], words: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    base = "tiny-bloom" if "bloom" in words else "tiny-llama"
    folder = _adapter(tmp_path, base, {"method": "lora", "r": 4})
    assert words in _refused(["export", str(folder), "--out", str(tmp_path / "out"), "--base-model", base, *argv],
                             capsys)


@pytest.mark.parametrize("method, words", [("dora", "llama.cpp has no DoRA"),
                                           ("ia3", "PEFT cannot convert it"),
                                           ("peft:loha", "pass --as-lora R")])
def test_export_gguf_lora_refuses_what_is_not_a_lora_and_says_what_works(tmp_path: Path, method: str, words: str,
                                                                         capsys: pytest.CaptureFixture) -> None:
    spec = {"method": method, "peft_options": {"r": 4}} if method.startswith("peft:") else method
    folder = _adapter(tmp_path, "tiny-llama", spec)
    line = _refused(["export", str(folder), "--out", str(tmp_path / "out"), "--base-model", "tiny-llama", "--format",
                     "gguf-lora"], capsys)
    assert words in line and "--format gguf" in line


def test_export_never_replaces_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _adapter(tmp_path, "tiny-llama", {"method": "lora", "r": 4})
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    argv = ["export", str(folder), "--base-model", "tiny-llama", "--overwrite", "--out"]
    assert "not an llm-adapters export" in _refused([*argv, str(foreign)], capsys)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert main(argv[:-2] + ["--out", str(tmp_path / "ours")]) == 0
    capsys.readouterr()
    assert "pass --overwrite" in _refused(argv[:-2] + ["--out", str(tmp_path / "ours")], capsys)
    assert main([*argv, str(tmp_path / "ours")]) == 0


def test_export_of_a_pissa_run_evaluates_as_the_run_does(tmp_path: Path) -> None:
    """A fine-tuned PiSSA run (saved as a LoRA of rank 2r), exported and evaluated as a plain base model, answers
    every question as the base with the run's adapter does."""
    from llm_adapters.data.tasks import Task
    from llm_adapters.eval import evaluate_tasks
    from llm_adapters.train import finetune, load_config

    records = [{"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} + {b} = {a + b}. The answer is "
                f"{a + b}.", "answer": str(a + b)} for a, b in [(1, 2), (13, 4), (7, 25), (100, 1), (3, 3), (42, 8)]]
    (tmp_path / "train.json").write_text(json.dumps(records))
    task = Task("sums", "sums", "math", "number", max_new_tokens=12)
    (tmp_path / "data" / task.relpath).parent.mkdir(parents=True)
    (tmp_path / "data" / task.relpath).write_text(json.dumps(records))
    run = finetune(load_config(data=str(tmp_path / "train.json"), output_dir=str(tmp_path / "run"),
                               base_model="tiny-llama", adapter={"method": "pissa", "r": 4, "dropout": 0.0},
                               template="alpaca", batch_size=2, micro_batch_size=2, warmup_steps=0,
                               learning_rate=3e-2, max_steps=3, progress=False))
    export_adapter(ExportConfig(adapter=str(run), out=str(tmp_path / "merged")))
    model, tokenizer = load_model("tiny-llama")
    settings = dict(progress=False, template="alpaca", max_new_tokens=12)
    with_adapter = evaluate_tasks(load_adapter(model, run), tokenizer, [task], tmp_path / "data", tmp_path / "e1",
                                  base_model="tiny-llama", adapter=str(run), **settings)
    merged, merged_tokenizer = load_model(str(tmp_path / "merged"))
    exported = evaluate_tasks(merged, merged_tokenizer, [task], tmp_path / "data", tmp_path / "e2",
                              base_model=str(tmp_path / "merged"), **settings)
    plain = evaluate_tasks(load_model("tiny-llama")[0], tokenizer, [task], tmp_path / "data", tmp_path / "e3",
                           base_model="tiny-llama", **settings)

    def generations(folder: Path) -> list[str]:
        return [json.loads(line)["generation"] for line in (folder / "sums" / "predictions.jsonl").open()]

    assert generations(tmp_path / "e2") == generations(tmp_path / "e1") != generations(tmp_path / "e3")
    assert exported["tasks"]["sums"]["accuracy"] == with_adapter["tasks"]["sums"]["accuracy"]
    manifest = json.loads((tmp_path / "merged" / "manifest.json").read_text())
    assert manifest["adapter"]["method"] == "pissa" and manifest["template"] == "alpaca"
    assert plain["tasks"]["sums"]["n"] == len(records)


@pytest.mark.slow
def test_export_gguf_of_the_embedded_model_matches_its_own_gguf_and_our_loader(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2 + a perturbed LoRA as an f32 GGUF: the tokenizer and layout are those of the GGUF it ships as (which
    llama.cpp's converter wrote), and read back through our GGUF loader it gives the merged model's logits."""
    from llm_adapters.models import EMBEDDED, embedded_gguf_path

    folder = _adapter(tmp_path, EMBEDDED, {"method": "lora", "r": 4, "alpha": 8, "placement": "attn"})
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "gguf"), base_model=EMBEDDED,
                                format="gguf"))
    ours, shipped = _gguf_fields(tmp_path / "gguf" / "model.gguf"), _gguf_fields(embedded_gguf_path())
    for key in [k for k in shipped if k.startswith(("tokenizer.", "llama."))]:
        assert ours[key] == shipped[key], key
    layout = [sorted((t.name, tuple(t.shape)) for t in gguf.GGUFReader(p).tensors)
              for p in (tmp_path / "gguf" / "model.gguf", embedded_gguf_path())]
    assert layout[0] == layout[1]
    expected, plain = _adapter_logits(EMBEDDED, folder)
    assert _largest(expected, plain) > 1e-2
    monkeypatch.setenv("LLM_ADAPTERS_CACHE", str(tmp_path / "cache"))  # the converted copy goes with tmp_path
    reread, tokenizer = load_model(str(tmp_path / "gguf" / "model.gguf"))
    assert _largest(_logits(reread, tokenizer), expected) < 1e-4


_LLAMA_CPP_SCRIPT = """
import json, sys
import numpy as np
from llama_cpp import Llama
paths, ids = json.loads(sys.argv[1]), json.loads(sys.argv[2])
def logits(model, lora=None):
    llm = Llama(model_path=model, lora_path=lora, logits_all=True, n_ctx=64, n_threads=1, verbose=False, seed=0)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)]).tolist()
print(json.dumps({"base": logits(paths["base"]), "merged": logits(paths["merged"]),
                  "lora": logits(paths["base"], paths["lora"])}))
"""


def _llama_cpp_python() -> str | None:
    """An interpreter that has llama-cpp-python: this one, or $LLM_ADAPTERS_LLAMA_CPP_PYTHON (it needs compiling,
    so it is not part of the test extra)."""
    import importlib.util
    import os

    if importlib.util.find_spec("llama_cpp") is not None:
        return sys.executable
    return os.environ.get("LLM_ADAPTERS_LLAMA_CPP_PYTHON")


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llamacpp_runs_the_gguf_export_and_the_gguf_lora_as_transformers_runs_the_adapter(
        tmp_path: Path, arch: str) -> None:
    """llama.cpp itself (llama-cpp-python): the merged GGUF, and the base GGUF with the GGUF LoRA (rsLoRA: the
    scale only right if alpha is written as PEFT's scale times r), give the adapter model's logits."""
    interpreter = _llama_cpp_python()
    if interpreter is None:
        print("skipped: llama-cpp-python is not installed here (pip install llama-cpp-python compiles llama.cpp; "
              "or set LLM_ADAPTERS_LLAMA_CPP_PYTHON to an interpreter that has it)")
        pytest.skip("llama-cpp-python not installed (set LLM_ADAPTERS_LLAMA_CPP_PYTHON to a Python that has it)")
    from transformers import AutoConfig

    from llm_adapters.export.gguf_model import write_model_gguf
    from llm_adapters.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")  # llama.cpp needs a BPE vocabulary with merges: SmolLM2's
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = str(tmp_path / "base")
    folder = _adapter(tmp_path, base, {"method": "rslora", "r": 4, "alpha": 8})
    for fmt in ("gguf", "gguf-lora"):
        export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / fmt), base_model=base, format=fmt))
    model, _ = load_model(base)
    write_model_gguf(model, tokenizer, tmp_path / "base.gguf", "float32", "base")
    ids = tokenizer("The quick brown fox jumps over the lazy dog. 12 + 30 = 42")["input_ids"]
    with torch.no_grad():
        expected = load_adapter(load_model(base)[0], folder)(torch.tensor([ids])).logits[0]
        plain = model(torch.tensor([ids])).logits[0]
    paths = {"base": str(tmp_path / "base.gguf"), "merged": str(tmp_path / "gguf" / "model.gguf"),
             "lora": str(tmp_path / "gguf-lora" / "adapter.gguf")}
    output = subprocess.run([interpreter, "-c", _LLAMA_CPP_SCRIPT, json.dumps(paths), json.dumps(ids)],
                            capture_output=True, text=True, check=True).stdout
    ran = {key: torch.tensor(value) for key, value in json.loads(output.strip().splitlines()[-1]).items()}
    assert float((expected - plain).abs().max()) > 0.1  # the adapter moves the logits far more than the tolerance
    # llama.cpp keeps its KV cache in f16: its logits differ from transformers' fp32 in the third decimal.
    assert float((ran["base"] - plain).abs().max()) < 5e-3
    assert float((ran["merged"] - expected).abs().max()) < 5e-3
    assert float((ran["lora"] - ran["merged"]).abs().max()) < 1e-4


def test_export_gguf_lora_checks_the_pairs_it_writes_and_refuses_weights_outside_them(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_adapters.export import gguf_lora

    folder = _adapter(tmp_path, "tiny-llama", {"method": "lora", "r": 4, "alpha": 8})
    (folder / "manifest.json").write_text(json.dumps({"spec": {"method": "peft:lora"}}))  # a peft:lora run
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "lora"), base_model="tiny-llama",
                                format="gguf-lora"))
    check = json.loads((tmp_path / "lora" / "manifest.json").read_text())["check"]
    assert check["max_abs_logit_difference"] < 1e-4 and "pairs written" in check["compared"]
    real = gguf_lora.pairs_from_model
    monkeypatch.setattr(gguf_lora, "pairs_from_model", lambda model: real(model)[1:])  # a pair lost on the way
    export_adapter(ExportConfig(adapter=str(folder), out=str(tmp_path / "short"), base_model="tiny-llama",
                                format="gguf-lora"))
    assert json.loads((tmp_path / "short" / "manifest.json").read_text())["check"][
        "max_abs_logit_difference"] > 1e-3  # the check sees it
    monkeypatch.undo()
    saved = _adapter(tmp_path, "tiny-llama", {"method": "peft:lora", "placement": "attn",
                                               "peft_options": {"r": 4, "modules_to_save": ["lm_head"]}}, "mts")
    line = _refused(["export", str(saved), "--out", str(tmp_path / "out"), "--base-model", "tiny-llama",
                     "--format", "gguf-lora"], capsys)
    assert "also trains modules_to_save" in line and "--format gguf" in line
