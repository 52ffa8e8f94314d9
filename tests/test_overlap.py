"""The train/test overlap check: planted duplicates are found, nothing else is; math_data.json is flagged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_adapters.cli import main
from llm_adapters.data.io import ENV_DATA
from llm_adapters.data.overlap import check_overlap, normalise
from llm_adapters.data.tasks import TASKS
from shared_data import LLM_ADAPTERS_DATA, SHARED_DATASETS

SHARED, DATA = SHARED_DATASETS, LLM_ADAPTERS_DATA
pytestmark = pytest.mark.shared_data
PLANTED_AT = (1, 4, 6)


def test_normalise_modes() -> None:
    assert normalise("  Tom  has\n56.0 Books . ", "ws") == "tom has 56.0 books ."
    assert normalise("  Tom  has\n56.0 Books . ", "alnum") == "tomhas56books"
    assert normalise("It costs 56.05 dollars", "alnum") == "itcosts5605dollars"
    assert normalise("What is x? Answer Choices: (A) 1 (B) 2", "ws") == "what is x?"
    with pytest.raises(ValueError, match="accepted: ws, alnum"):
        normalise("x", "exact")


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, list[str]]:
    """8 GSM8K-train questions (not in any test set) with 3 GSM8K test questions planted in changed case/spacing."""
    test = json.loads((DATA / TASKS["gsm8k"].relpath).read_text(encoding="utf-8"))
    train = [json.loads(line)["question"] for line in (SHARED / "extra/gsm8k/train.jsonl").open()][:8]
    copies = [
        test[10]["instruction"].upper(),
        "  " + test[20]["instruction"].replace(" ", "   "),
        test[30]["instruction"].lower() + "\n",
    ]
    for at, copy in zip(PLANTED_AT, copies):
        train.insert(at, copy)
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"instruction": q, "output": "", "answer": "1"}) + "\n" for q in train))
    return path, copies


@pytest.mark.parametrize("mode", ["ws", "alnum"])
def test_check_overlap_finds_the_planted_duplicates_and_nothing_else(planted, mode: str) -> None:
    path, copies = planted
    report = check_overlap(path, "gsm8k,svamp,addsub", DATA, mode)
    by_task = {t.task: t for t in report.tasks}
    assert report.n_train == 11 and report.total_matched == 3
    assert (by_task["gsm8k"].train_matched, by_task["gsm8k"].test_covered, by_task["gsm8k"].n_test) == (3, 3, 1319)
    assert [e["train_index"] for e in by_task["gsm8k"].examples] == list(PLANTED_AT)
    assert [e["test_index"] for e in by_task["gsm8k"].examples] == [10, 20, 30]
    assert by_task["svamp"].train_matched == by_task["addsub"].train_matched == 0


def test_check_overlap_flags_math_data_json_as_mostly_test_questions() -> None:
    report = check_overlap(DATA / "ft-training_set/math_data.json", "math", DATA, "ws")
    covered = {t.task: t.test_covered / t.n_test for t in report.tasks}
    # Reference E.3: about 80 % of each of the six paper test sets is in math_data.json.
    for task in ("gsm8k", "svamp", "aqua", "multiarith", "addsub", "singleeq"):
        assert 0.75 <= covered[task] <= 0.9, (task, covered[task])
    assert report.total_matched > 3000


def test_check_overlap_lists_tasks_without_a_test_file(planted) -> None:
    report = check_overlap(planted[0], "gsm8k,hellaswag", DATA)
    assert report.missing == ["hellaswag"] and [t.task for t in report.tasks] == ["gsm8k"]
    with pytest.raises(FileNotFoundError, match="hellaswag"):
        check_overlap(planted[0], "hellaswag", DATA)


def test_cli_check_overlap_prints_and_fails_only_when_asked(
    planted, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["data", "check-overlap", str(planted[0]), "--tasks", "gsm8k"]
    monkeypatch.setenv(ENV_DATA, str(SHARED))  # the data folder's parent, found without --data-dir
    assert main(argv) == 0
    assert "3/1319" in capsys.readouterr().out
    monkeypatch.setenv(ENV_DATA, str(planted[0].parent))  # no dataset/ there: --data-dir wins
    assert main(argv + ["--data-dir", str(SHARED), "--json", "--fail-on-overlap"]) == 1
    assert json.loads(capsys.readouterr().out)["total_matched"] == 3
    assert main(["data", "check-overlap", str(planted[0]), "--tasks", "nope", "--data-dir", str(SHARED)]) == 2
