"""The evaluate command: outputs, resume after a kill, missing and bad data, adapters, scoring modes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from llm_adapters.cli import main
from llm_adapters.data.tasks import TASKS, Task
from llm_adapters.eval import PredictionLog, evaluate_tasks, wilson_interval
from llm_adapters.files import sha256_file
from llm_adapters.eval.extract import extract_answer
from llm_adapters.models import load_model
from helpers import memorise, perturb
from shared_data import LLM_ADAPTERS_DATA

ROOT = Path(__file__).resolve().parents[1]
SHARED = LLM_ADAPTERS_DATA
FAST = dict(max_new_tokens=6, progress=False)


pytestmark = [pytest.mark.shared_data, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return load_model("tiny-llama")


def _records(folder: Path) -> list[dict[str, Any]]:
    """Predictions without their timings, which differ between runs."""
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_wilson_interval_matches_hand_computed_values() -> None:
    # 8/10: p = .8, z² = 3.8415; centre = (.8 + .19207) / 1.38415 = .71674;
    # half = 1.95996 / 1.38415 * sqrt(.016 + .0096037) = .22658  ->  (.4902, .9433)
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94332), abs=1e-4)
    # 0/6: centre = half = (3.8415 / 12) / 1.64025 = .19517  ->  (0, .3903)
    assert wilson_interval(0, 6) == pytest.approx((0.0, 0.39033), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_prediction_log_drops_a_torn_last_line_and_truncates_it(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p.jsonl")
    log.append([{"index": 0, "x": 1}, {"index": 2, "x": 3}])
    with open(log.path, "a") as handle:
        handle.write('{"index": 1, "x"')
    assert sorted(log.load()) == [0, 2]
    assert log.path.read_text().endswith('"x": 3}\n')
    log.append([{"index": 1, "x": 2}])
    assert sorted(log.load()) == [0, 1, 2]


def test_prediction_log_damaged_middle_line_raises(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"index": 0}\n{"ind\n{"index": 2}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl: line 2 is damaged"):
        PredictionLog(path).load()


def test_evaluate_tasks_writes_predictions_summary_and_table(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    result = evaluate_tasks(model, tokenizer, "boolq,aqua", SHARED, tmp_path, limit=5, base_model="tiny-llama",
                            **FAST)
    for name in ("boolq", "aqua"):
        records = _records(tmp_path / name)
        assert [r["index"] for r in records] == list(range(5))
        assert set(records[0]) >= {"index", "prompt", "generation", "prediction", "gold", "correct", "n_tokens"}
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary == result["tasks"][name]
        assert summary["n"] == 5 and summary["model"] == "tiny-llama" and summary["adapter"] is None
        assert summary["data"]["sha256"] == sha256_file(SHARED / TASKS[name].relpath)
        assert summary["provenance"]["versions"]["transformers"] == transformers.__version__
        assert (summary["provenance"]["device"], summary["provenance"]["dtype"]) == ("cpu", "float32")
        assert summary["decoding"]["max_new_tokens"] == 6
        assert summary["tokens_generated"] == sum(r["n_tokens"] for r in records)
        assert summary["correct"] == sum(r["correct"] for r in records)  # from the file, not the summary code
        low, high = summary["ci95"]
        assert 0 <= low <= summary["accuracy"] <= high <= 1 and high - low > 0.2  # n = 5 is a wide interval
    assert (tmp_path / "results.md").read_text() == result["table"]
    assert result["table"].count("\n| boolq | 5 |") == 1


def test_evaluate_tasks_batch_size_and_drafts_do_not_change_predictions(tiny: tuple[Any, Any], tmp_path: Path
                                                                        ) -> None:
    model, tokenizer = tiny
    evaluate_tasks(model, tokenizer, "gsm8k,piqa", SHARED, tmp_path / "b1", limit=6, batch_size=1, draft_tokens=0,
                   **FAST)
    evaluate_tasks(model, tokenizer, "gsm8k,piqa", SHARED, tmp_path / "b4", limit=6, batch_size=4, **FAST)
    for name in ("gsm8k", "piqa"):
        assert _records(tmp_path / "b1" / name) == _records(tmp_path / "b4" / name)
    # speed settings only: the same folder resumes under other values instead of being refused
    evaluate_tasks(model, tokenizer, "gsm8k", SHARED, tmp_path / "b4", limit=6, batch_size=2, draft_tokens=3, **FAST)
    assert _records(tmp_path / "b1" / "gsm8k") == _records(tmp_path / "b4" / "gsm8k")


def test_evaluate_tasks_resumes_after_a_torn_write(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path / "whole", limit=8, batch_size=3, **FAST)
    evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path / "cut", limit=8, batch_size=3, **FAST)
    predictions = tmp_path / "cut" / "boolq" / "predictions.jsonl"
    text = predictions.read_text()
    predictions.write_text(text[: len(text) // 2])  # a kill in the middle of a line
    (tmp_path / "cut" / "boolq" / "summary.json").unlink()
    result = evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path / "cut", limit=8, batch_size=3, **FAST)
    assert _records(tmp_path / "cut" / "boolq") == _records(tmp_path / "whole" / "boolq")
    assert result["tasks"]["boolq"]["n"] == 8


def test_a_task_folder_holding_only_a_killed_first_write_starts_fresh(tiny: tuple[Any, Any], tmp_path: Path
                                                                      ) -> None:
    """A kill inside the atomic write of a task folder's first run.json leaves only its temporary file there (seen
    in the two-process kill test): the folder is still ours and empty, while a foreign file keeps it refused."""
    model, tokenizer = tiny
    for name in ("whole", "cut", "foreign"):
        evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path / name, limit=4, **FAST)
    folder = tmp_path / "cut" / "boolq"
    shutil.rmtree(folder)  # the output folder is ours; its boolq folder has only the cut-short first write
    folder.mkdir()
    (folder / ".run.json.tmp4242").write_text('{"identity": {"base_mo')
    evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path / "cut", limit=4, **FAST)
    assert _records(folder) == _records(tmp_path / "whole" / "boolq")
    foreign = tmp_path / "foreign" / "boolq"
    shutil.rmtree(foreign)
    foreign.mkdir()
    (foreign / ".run.json.tmp4242").write_text("{")
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"boolq is not empty and holds files that are not ours \(\.run\.json\.tmp4242, "
                                              r"notes\.txt\)"):
        evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path / "foreign", limit=4, **FAST)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_evaluate_command_resumes_after_kill_9(tmp_path: Path) -> None:
    """Kill a real `llm-adapters evaluate` process once it has written a batch, then run it again."""
    args = ["evaluate", "--base-model", "tiny-llama", "--tasks", "gsm8k", "--limit", "24", "--batch-size", "2",
            "--max-new-tokens", "48", "--data-dir", str(SHARED), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "llm_adapters.cli", *args, "--output-dir", str(tmp_path / "k")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    predictions = tmp_path / "k" / "gsm8k" / "predictions.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (predictions.exists() and predictions.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = predictions.read_text().count("\n")
    assert 2 <= written < 24, "the process should have been killed mid-task"
    assert main([*args, "--output-dir", str(tmp_path / "k")]) == 0
    assert main([*args, "--output-dir", str(tmp_path / "whole")]) == 0
    assert _records(tmp_path / "k" / "gsm8k") == _records(tmp_path / "whole" / "gsm8k")
    resumed, whole = (json.loads((tmp_path / d / "gsm8k" / "summary.json").read_text()) for d in ("k", "whole"))
    assert (resumed["accuracy"], resumed["n"], resumed["tokens_generated"]) == (
        whole["accuracy"], whole["n"], whole["tokens_generated"])


def test_evaluate_tasks_missing_file_stops_before_any_work(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    with pytest.raises(FileNotFoundError, match=r"missing data for hellaswag \(.*hellaswag/test\.json\); download "
                                                r"with: llm-adapters data download hellaswag .*--skip-missing"):
        evaluate_tasks(model, tokenizer, "boolq,hellaswag", SHARED, tmp_path / "o", **FAST)
    assert not (tmp_path / "o").exists()
    with pytest.raises(FileNotFoundError, match="missing data for hellaswag"):
        evaluate_tasks(model, tokenizer, "hellaswag", SHARED, tmp_path / "o", skip_missing=True, **FAST)


def test_evaluate_tasks_skip_missing_lists_skipped_tasks(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    result = evaluate_tasks(model, tokenizer, "hellaswag,obqa", SHARED, tmp_path, skip_missing=True, limit=2,
                            **FAST)
    assert list(result["tasks"]) == ["obqa"] and list(result["skipped"]) == ["hellaswag"]
    assert "| hellaswag | – | skipped: missing" in result["table"]


@pytest.mark.parametrize("content, message", [
    ('[{"instruction": "q", "answer": "true"}', r"boolq/test\.json: malformed JSON at line 1"),
    ('[{"instruction": "q", "answer": "true"}, {"instruction": "q"}]', r"record 1, field 'answer': missing"),
    ('[{"instruction": "q", "answer": "yes"}]', r"record 0, field 'answer': 'yes' is not one of true, false"),
])
def test_evaluate_tasks_bad_data_names_file_record_and_field(tiny: tuple[Any, Any], tmp_path: Path,
                                                             content: str, message: str) -> None:
    model, tokenizer = tiny
    path = tmp_path / "data" / TASKS["boolq"].relpath
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        evaluate_tasks(model, tokenizer, "boolq", tmp_path / "data", tmp_path / "o", **FAST)
    assert not (tmp_path / "o").exists()


def test_evaluate_tasks_other_run_in_output_dir_needs_overwrite(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    evaluate_tasks(model, tokenizer, "obqa", SHARED, tmp_path, limit=2, **FAST)
    with pytest.raises(ValueError, match=r"holds results of another run with other settings or inputs "
                                         r"\(template: 'original' -> 'alpaca'\); choose another --output-dir"):
        evaluate_tasks(model, tokenizer, "obqa", SHARED, tmp_path, limit=2, template="alpaca", **FAST)
    result = evaluate_tasks(model, tokenizer, "obqa", SHARED, tmp_path, limit=2, template="alpaca", overwrite=True,
                            **FAST)
    assert result["tasks"]["obqa"]["template"] == "alpaca"


def test_evaluate_tasks_chat_template_missing_fails_before_work(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="needs a tokenizer with a chat template"):
        evaluate_tasks(model, tokenizer, "obqa", SHARED, tmp_path / "o", template="chat", **FAST)
    assert not (tmp_path / "o").exists()


def test_evaluate_tasks_loglik_scoring_reported_separately(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    both = evaluate_tasks(model, tokenizer, "siqa", SHARED, tmp_path / "both", limit=4, scoring="both", **FAST)
    summary = both["tasks"]["siqa"]
    assert summary["metric"] == "generate" and set(summary["loglik"]) == {"accuracy", "correct", "n", "ci95"}
    for record in _records(tmp_path / "both" / "siqa"):
        scores = record["loglik_scores"]
        assert record["loglik_prediction"] == max(scores, key=scores.get)
        assert record["loglik_correct"] == (record["loglik_prediction"] == record["gold"])
    with pytest.warns(UserWarning, match="math tasks are scored by generation"):
        only = evaluate_tasks(model, tokenizer, "siqa,mawps", SHARED, tmp_path / "ll", limit=4, scoring="loglik",
                              **FAST)
    assert only["tasks"]["siqa"]["metric"] == "loglik" and only["tasks"]["mawps"]["metric"] == "generate"
    assert only["tasks"]["siqa"]["accuracy"] == summary["loglik"]["accuracy"]


def test_evaluate_tasks_original_rules_apply_to_predictions(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    result = evaluate_tasks(model, tokenizer, "aqua", SHARED, tmp_path, limit=4, rules="original", **FAST)
    for record in _records(tmp_path / "aqua"):
        assert record["prediction"] == extract_answer("aqua", record["generation"], rules="original")
    by_rules = result["tasks"]["aqua"]["accuracy_by_rules"]
    assert result["tasks"]["aqua"]["accuracy"] == by_rules["original"]["accuracy"]
    assert by_rules["original"]["text"] == by_rules["default"]["text"] == "the full generation"


def test_evaluate_command_with_a_lora_adapter_matches_in_memory_model(tmp_path: Path) -> None:
    """An adapter saved by plain PEFT, with dropout (which must be off at test time), through the CLI."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model("tiny-llama")
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, init_lora_weights=False,
                                                  target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    args = ["evaluate", "--base-model", "tiny-llama", "--adapter", str(tmp_path / "adapter"), "--tasks", "boolq",
            "--limit", "4", "--max-new-tokens", "6", "--data-dir", str(SHARED), "--no-progress"]
    assert main([*args, "--output-dir", str(tmp_path / "cli")]) == 0
    evaluate_tasks(peft_model, tokenizer, "boolq", SHARED, tmp_path / "mem", limit=4, **FAST)
    assert _records(tmp_path / "cli" / "boolq") == _records(tmp_path / "mem" / "boolq")
    summary = json.loads((tmp_path / "cli" / "boolq" / "summary.json").read_text())
    assert summary["adapter"] == str(tmp_path / "adapter")


def test_evaluate_command_without_progress_bars_logs_one_line_per_task(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--base-model", "tiny-llama", "--tasks", "boolq,piqa", "--limit", "3", "--max-new-tokens",
            "4", "--data-dir", str(SHARED), "--no-progress", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr()
    for task in ("boolq", "piqa"):
        summary = json.loads((tmp_path / task / "summary.json").read_text())
        assert (f"{task}: 3 examples, generate accuracy {100 * summary['accuracy']:.1f} %, "
                f"{summary['seconds']:.1f} s\n") in out.out
    assert "ex/s]" not in out.err  # no tqdm bar


def test_evaluate_command_unknown_task_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--base-model", "tiny-llama", "--tasks", "gsm9k"]) == 2
    assert "unknown task 'gsm9k'; accepted tasks: multiarith" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_embedded_model_math_and_commonsense(tmp_path: Path) -> None:
    """SmolLM2 end to end on a few questions: answers are found, batching changes nothing."""
    model, tokenizer = load_model("smollm2-135m")
    for batch_size in (1, 4):
        evaluate_tasks(model, tokenizer, "gsm8k,boolq", SHARED, tmp_path / str(batch_size), limit=4,
                       batch_size=batch_size, max_new_tokens=64, progress=False)
    for name in ("gsm8k", "boolq"):
        assert _records(tmp_path / "1" / name) == _records(tmp_path / "4" / name)


# --- results that can be trusted -------------------------------------------------------------------------------

QUESTIONS = [(f"What is {a} plus {b}?", a + b) for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 8), (9, 3)]]
SUMS = Task("sums", "sums", "math", "number", max_new_tokens=16)


@pytest.fixture(scope="module")
def answering(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, Path]:
    """tiny-llama trained to answer QUESTIONS in the alpaca template ("The answer is N."), and a test file whose
    gold answers are right for the first four questions and wrong for the last two."""
    from llm_adapters.data.templates import build_prompt

    model, tokenizer = load_model("tiny-llama")
    texts = [build_prompt(q, template="alpaca") + f"The answer is {n}." + tokenizer.eos_token for q, n in QUESTIONS]
    assert memorise(model, tokenizer, texts, steps=300) < 0.05
    data = tmp_path_factory.mktemp("sums-data")
    records = [{"instruction": q, "input": "", "output": "", "answer": str(n if i < 4 else n + 1)}
               for i, (q, n) in enumerate(QUESTIONS)]
    (data / "dataset" / "sums").mkdir(parents=True)
    (data / "dataset" / "sums" / "test.json").write_text(json.dumps(records))
    return model, tokenizer, data


def test_evaluate_tasks_scores_right_answers_right(answering: tuple[Any, Any, Path], tmp_path: Path) -> None:
    """Through the real pipeline (template, batched generation, stop rule, extraction, scoring): an accuracy
    known in advance, and not 0."""
    model, tokenizer, data = answering
    result = evaluate_tasks(model, tokenizer, [SUMS], data, tmp_path, template="alpaca", batch_size=4,
                            progress=False)
    records = _records(tmp_path / "sums")
    assert [r["prediction"] for r in records] == [float(n) for _, n in QUESTIONS]
    assert all(r["generation"].startswith("The answer is ") for r in records)
    assert [r["correct"] for r in records] == [True] * 4 + [False] * 2
    summary = result["tasks"]["sums"]
    assert (summary["correct"], summary["n"], summary["accuracy"]) == (4, 6, 4 / 6)
    assert "| sums | 6 | 66.7 |" in result["table"]


def test_evaluate_tasks_smaller_limit_keeps_every_record_and_the_table_every_task(tiny: tuple[Any, Any],
                                                                                 tmp_path: Path) -> None:
    model, tokenizer = tiny
    evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path, limit=6, **FAST)
    evaluate_tasks(model, tokenizer, "piqa", SHARED, tmp_path, limit=2, **FAST)
    six = _records(tmp_path / "boolq")
    result = evaluate_tasks(model, tokenizer, "boolq", SHARED, tmp_path, limit=3, **FAST)
    assert _records(tmp_path / "boolq") == six  # nothing paid for is deleted
    summary = result["tasks"]["boolq"]
    assert summary["n"] == 3 and summary["correct"] == sum(r["correct"] for r in six[:3])
    table = (tmp_path / "results.md").read_text()
    assert "| boolq | 3 |" in table and "| piqa | 2 |" in table  # the task of the earlier call is still listed


def test_evaluate_tasks_default_rules_do_not_score_the_original_rules_on_cut_text(tiny: tuple[Any, Any],
                                                                                  tmp_path: Path) -> None:
    model, tokenizer = tiny
    cut = evaluate_tasks(model, tokenizer, "gsm8k", SHARED, tmp_path / "d", limit=3, **FAST)["tasks"]["gsm8k"]
    assert cut["decoding"]["stop_rules"] is True
    assert cut["accuracy_by_rules"]["default"]["accuracy"] == cut["accuracy"]
    assert cut["accuracy_by_rules"]["original"]["accuracy"] is None
    assert "not computed" in cut["accuracy_by_rules"]["original"]["note"]
    full = evaluate_tasks(model, tokenizer, "gsm8k", SHARED, tmp_path / "o", limit=3, rules="original",
                          **FAST)["tasks"]["gsm8k"]
    assert full["decoding"]["stop_rules"] is False
    assert all(r["n_tokens"] == 6 or r["generation"] == "" for r in _records(tmp_path / "o" / "gsm8k"))


def _save_lora(folder: Path, seed: int) -> Any:
    """A LoRA adapter on tiny-llama with non-zero B (so it changes the model), saved to `folder`."""
    from llm_adapters.methods import attach

    model, _ = load_model("tiny-llama")
    peft_model = attach(model, {"method": "lora", "r": 4, "dropout": 0.0, "placement": "attn"})
    perturb(peft_model, seed=seed)
    peft_model.save_pretrained(folder)
    return peft_model.eval()


def test_evaluate_command_adapter_retrained_in_place_is_refused_then_redone(tmp_path: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    adapter, out = tmp_path / "adapter", tmp_path / "out"
    args = ["evaluate", "--base-model", "tiny-llama", "--adapter", str(adapter), "--tasks", "boolq", "--limit", "4",
            "--max-new-tokens", "6", "--data-dir", str(SHARED), "--no-progress", "--output-dir", str(out)]
    _save_lora(adapter, seed=0)
    assert main(args) == 0
    first = _records(out / "boolq")
    retrained = _save_lora(adapter, seed=1)  # the same path, new weights
    assert main(args) == 2
    assert "adapter.weights_sha256: '" in capsys.readouterr().err
    assert _records(out / "boolq") == first  # refused: nothing changed
    assert main([*args, "--overwrite"]) == 0
    _, tokenizer = load_model("tiny-llama")
    evaluate_tasks(retrained, tokenizer, "boolq", SHARED, tmp_path / "mem", limit=4, **FAST)
    assert _records(out / "boolq") == _records(tmp_path / "mem" / "boolq") != first  # the new weights' answers


@pytest.mark.parametrize("flag, value, message", [
    ("--batch-size", "0", "batch_size must be a positive integer, got 0"),
    ("--limit", "-1", "limit must be a positive integer, got -1"),
    ("--limit", "ten", "limit must be an integer, got 'ten'"),
    ("--dtype", "float8", "dtype 'float8' is not one of auto, float32"),
])
def test_evaluate_command_bad_settings_are_reported_before_the_model_loads(flag: str, value: str, message: str,
                                                                          capsys: pytest.CaptureFixture[str],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import llm_adapters.models

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the model must not load before the settings are checked")

    monkeypatch.setattr(llm_adapters.models, "load_model", refuse)
    assert main(["evaluate", "--base-model", "tiny-llama", "--tasks", "boolq", flag, value]) == 2
    assert message in capsys.readouterr().err


def test_evaluate_command_cuda_without_a_gpu_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["evaluate", "--base-model", "tiny-llama", "--tasks", "boolq", "--limit", "1", "--data-dir", str(SHARED),
            "--output-dir", str(tmp_path), "--device", "cuda:0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "device 'cuda:0' asked for, but this machine has no CUDA GPU" in err


def test_evaluate_command_takes_the_adapters_template_and_refuses_another_base(tmp_path: Path, capsys) -> None:
    from llm_adapters.train import finetune, load_config

    data = tmp_path / "train.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and 1.", "input": "", "output": f"{i + 1}"}
                                for i in range(4)]))
    adapter = finetune(load_config(base_model="tiny-llama", adapter={"method": "lora", "r": 4}, data=str(data),
                                   output_dir=str(tmp_path / "adapter"), template="alpaca", batch_size=2,
                                   micro_batch_size=2, max_steps=1, progress=False))
    capsys.readouterr()
    args = ["evaluate", "--adapter", str(adapter), "--tasks", "boolq", "--limit", "2", "--max-new-tokens", "4",
            "--data-dir", str(SHARED), "--no-progress"]
    assert main([*args, "--base-model", "tiny-llama", "--output-dir", str(tmp_path / "a")]) == 0
    assert "template alpaca: the one the adapter was trained with" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "boolq" / "summary.json").read_text())
    assert summary["template"] == "alpaca" and summary["adapter_cutoff_len"] == 256
    assert main([*args, "--base-model", "tiny-qwen2", "--output-dir", str(tmp_path / "b")]) == 2
    assert "was trained on {'name': 'tiny-llama'" in capsys.readouterr().err
    assert main([*args, "--base-model", "tiny-qwen2", "--output-dir", str(tmp_path / "b"),
                 "--allow-base-mismatch"]) == 0


def test_cli_internal_errors_keep_their_traceback_and_debug_shows_user_errors(monkeypatch: pytest.MonkeyPatch,
                                                                             capsys) -> None:
    import llm_adapters.eval

    def bug(*args: Any, **kwargs: Any) -> None:
        raise ValueError("an internal bug")  # a ValueError that is not the user's mistake

    monkeypatch.setattr(llm_adapters.eval, "prepare_tasks", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["evaluate", "--base-model", "tiny-llama", "--tasks", "boolq"])
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        main(["--debug", "evaluate", "--base-model", "tiny-llama", "--tasks", "gsm9k"])


def test_a_prompt_past_a_models_learned_positions_is_one_line(tmp_path: Path, capsys) -> None:
    # Found by review: tiny-opt (512 learned positions) on PIQA ended in an IndexError inside OPT's embedding.
    code = main(["evaluate", "--base-model", "tiny-opt", "--tasks", "piqa", "--limit", "2", "--data-dir",
                 str(LLM_ADAPTERS_DATA), "--output-dir", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "task piqa: question 0's prompt is 705 tokens and up to 32 more follow, past the model's 512 positions" in err
    predictions = tmp_path / "o" / "piqa" / "predictions.jsonl"
    assert not predictions.exists() or not predictions.read_text()  # nothing answered
