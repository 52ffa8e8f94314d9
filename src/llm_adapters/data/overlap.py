"""Train/test overlap: which training questions also occur in a benchmark's test set.

This is the leak that spoiled the original's `math_data.json` (about 80 % of the math test questions) and
Math10K (AddSub, MultiArith and SingleEq test questions; reference F.11). Questions are compared as
normalised text:

- `ws`: lower-case, whitespace collapsed;
- `alnum`: lower-case, only `[a-z0-9]` kept, and `56.0` written `56`. This also catches tokenised copies
  ("books ." vs "books.") such as MAWPS-derived sets, so it is the default.

For multiple-choice math (AQuA) the " Answer Choices: ..." tail is cut off first, so that a question with
differently spaced options still matches.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

from llm_adapters.data.io import read_records, resolve_layout_dir
from llm_adapters.data.tasks import Task, resolve_tasks
from llm_adapters.errors import MissingInputError, UserError

Mode = Literal["ws", "alnum"]
MODES: tuple[str, ...] = get_args(Mode)
_N_EXAMPLES = 3


def normalise(text: str, mode: Mode = "alnum") -> str:
    """The comparison key of a question.

    Example:
        >>> normalise("  Tom has 56.0 Books . ", "alnum")
        'tomhas56books'
    """
    if mode not in MODES:
        raise UserError(f"unknown overlap mode {mode!r}; accepted: {', '.join(MODES)}")
    text = text.split(" Answer Choices:")[0].lower()
    if mode == "ws":
        return " ".join(text.split())
    text = re.sub(r"(\d)\.0+(?!\d)", r"\1", text)  # 56.0 -> 56, 56.05 unchanged
    return re.sub(r"[^a-z0-9]", "", text)


def test_file(task: Task, data_dir: Path) -> Path:
    """Where a task's test file lies under a data directory in the LLM-Adapters layout."""
    return Path(data_dir) / task.relpath


def test_index(task: Task, data_dir: Path, mode: Mode) -> dict[str, list[int]]:
    """Map each normalised test question of `task` to the indices of the test records that have it.

    Raises:
        FileNotFoundError: the task's test file is missing.
        ValueError: a test record without a non-empty string `instruction` (named by file, index and field).
    """
    path = test_file(task, data_dir)
    index: dict[str, list[int]] = {}
    for i, record in enumerate(read_records(path, ("instruction",))):
        index.setdefault(normalise(record["instruction"], mode), []).append(i)
    return index


@dataclass
class TaskOverlap:
    """The overlap of one training set with one test set."""

    task: str
    n_test: int
    train_matched: int  # training items whose question is in the test set
    test_covered: int  # test items whose question is in the training set
    examples: list[dict] = field(default_factory=list)  # a few {train_index, test_index, text}


@dataclass
class OverlapReport:
    """What `check_overlap` found, per task; tasks without a test file are listed in `missing`."""

    train: str
    n_train: int
    mode: str
    tasks: list[TaskOverlap]
    missing: list[str] = field(default_factory=list)

    @property
    def total_matched(self) -> int:
        return sum(t.train_matched for t in self.tasks)

    def to_dict(self) -> dict:
        return asdict(self) | {"total_matched": self.total_matched}

    def format(self) -> str:
        """A human-readable table with a few examples per task."""
        lines = [f"{self.train}: {self.n_train} training items, mode {self.mode}"]
        lines.append(f"{'task':<12} {'train in test':>13} {'test covered':>18}")
        for t in self.tasks:
            share = f"{t.test_covered}/{t.n_test} ({100 * t.test_covered / max(t.n_test, 1):.1f}%)"
            lines.append(f"{t.task:<12} {t.train_matched:>13} {share:>18}")
            for ex in t.examples:
                lines.append(f"    train[{ex['train_index']}] = test[{ex['test_index']}]: {ex['text'][:90]!r}")
        if self.missing:
            lines.append(f"not checked (no test file): {', '.join(self.missing)}")
        return "\n".join(lines)


def match_tasks(
    questions: list[str], tasks: list[Task], data_dir: Path, mode: Mode = "alnum"
) -> tuple[list[TaskOverlap], dict[int, list[str]], list[str]]:
    """Compare questions against the tasks' test sets.

    Returns:
        (per-task overlaps, {question index: tasks whose test set holds it}, tasks with no test file).
    """
    keys = [normalise(q, mode) for q in questions]
    results: list[TaskOverlap] = []
    hits: dict[int, list[str]] = {}
    missing: list[str] = []
    for task in tasks:
        if not test_file(task, data_dir).is_file():
            missing.append(task.name)
            continue
        index = test_index(task, data_dir, mode)
        matched = [i for i, key in enumerate(keys) if key in index]
        covered = {j for i in matched for j in index[keys[i]]}
        examples = [
            {"train_index": i, "test_index": index[keys[i]][0], "text": questions[i]} for i in matched[:_N_EXAMPLES]
        ]
        n_test = sum(len(v) for v in index.values())
        results.append(TaskOverlap(task.name, n_test, len(matched), len(covered), examples))
        for i in matched:
            hits.setdefault(i, []).append(task.name)
    return results, hits, missing


def check_overlap(
    train_path: str | Path,
    tasks: str | list[str],
    data_dir: str | Path | None = None,
    mode: Mode = "alnum",
) -> OverlapReport:
    """Report the training questions of `train_path` that also occur in the test sets of `tasks`.

    Args:
        train_path: instruction data (JSON list or JSONL of records with an `instruction` field).
        tasks: task names or groups, e.g. "gsm8k,addsub" or "math".
        data_dir: folder in the LLM-Adapters layout (`dataset/<name>/test.json`) or its parent; default
            $LLM_ADAPTERS_DATA, else the cache (see `io.resolve_layout_dir`).
        mode: "ws" or "alnum" (see the module docstring).

    Raises:
        FileNotFoundError: the training file, the data directory, or every requested test file is missing.
        ValueError: an unknown task or mode, or a training record without a non-empty string `instruction`.

    Example:
        >>> report = check_overlap("math_data.json", "math")  # doctest: +SKIP
        >>> print(report.format())  # doctest: +SKIP
    """
    if mode not in MODES:
        raise UserError(f"unknown overlap mode {mode!r}; accepted: {', '.join(MODES)}")
    resolved = resolve_tasks(tasks)
    root = resolve_layout_dir(data_dir)
    questions = [r["instruction"] for r in read_records(train_path, ("instruction",))]
    results, _, missing = match_tasks(questions, resolved, root, mode)
    if not results:
        raise MissingInputError(f"no test file found under {root / 'dataset'} for {', '.join(missing)}")
    return OverlapReport(str(train_path), len(questions), mode, results, missing)
