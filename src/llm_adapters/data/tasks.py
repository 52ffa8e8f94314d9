"""The benchmark registry: one frozen record per test set, as data (lm-eval's habit).

Every test file is a JSON list of {instruction, input, output, answer} records, laid out as in the original
LLM-Adapters repository (`dataset/<folder>/test.json`). Generation lengths are the original's: 256 new tokens
for math, 32 for commonsense.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llm_adapters.errors import UserError

AnswerType = Literal["number", "letter", "label"]
UPSTREAM = "https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/main"


@dataclass(frozen=True)
class Task:
    """One benchmark test set.

    Args:
        name: our name for it (`gsm8k`, `arc-e`, ...).
        folder: its folder under `dataset/` in the original repository.
        group: `math` or `commonsense`.
        answer_type: `number` (float, |pred - gold| <= 1e-3), `letter` (A-E) or `label` (one of `labels`).
        labels: the accepted gold answers for letter and label tasks.
        max_new_tokens: the original's generation budget.
        version: bumped when the task's prompt, data or scoring changes; written into summary.json.
    """

    name: str
    folder: str
    group: Literal["math", "commonsense"]
    answer_type: AnswerType
    labels: tuple[str, ...] = ()
    max_new_tokens: int = 256
    version: str = "1"

    @property
    def relpath(self) -> str:
        """Path of the test file relative to the data directory."""
        return f"dataset/{self.folder}/test.json"

    @property
    def url(self) -> str:
        """The upstream raw address of the test file."""
        return f"{UPSTREAM}/{self.relpath}"


def _math(name: str, folder: str, answer_type: AnswerType = "number", labels: tuple[str, ...] = ()) -> Task:
    return Task(name, folder, "math", answer_type, labels, max_new_tokens=256)


def _choice(name: str, folder: str, labels: tuple[str, ...]) -> Task:
    return Task(name, folder, "commonsense", "label", labels, max_new_tokens=32)


def _numbered(prefix: str, n: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(1, n + 1))


_ALL = [
    _math("multiarith", "MultiArith"),
    _math("gsm8k", "gsm8k"),
    _math("addsub", "AddSub"),
    _math("aqua", "AQuA", "letter", ("A", "B", "C", "D", "E")),
    _math("singleeq", "SingleEq"),
    _math("svamp", "SVAMP"),
    _math("mawps", "mawps"),
    _choice("boolq", "boolq", ("true", "false")),
    _choice("piqa", "piqa", _numbered("solution", 2)),
    _choice("siqa", "social_i_qa", _numbered("answer", 3)),
    _choice("hellaswag", "hellaswag", _numbered("ending", 4)),
    _choice("winogrande", "winogrande", _numbered("option", 2)),
    _choice("arc-e", "ARC-Easy", _numbered("answer", 5)),
    _choice("arc-c", "ARC-Challenge", _numbered("answer", 5)),
    _choice("obqa", "openbookqa", _numbered("answer", 4)),
]
TASKS: dict[str, Task] = {task.name: task for task in _ALL}
# The paper's six math sets; mawps is evaluable but was added after the paper.
GROUPS: dict[str, tuple[str, ...]] = {
    "math": tuple(t.name for t in _ALL if t.group == "math"),
    "commonsense": tuple(t.name for t in _ALL if t.group == "commonsense"),
    "all": tuple(TASKS),
}


def resolve_tasks(names: str | list[str] | tuple[str, ...]) -> list[Task]:
    """Turn `gsm8k,boolq` or `math` or a list of names/groups into tasks, in order, without repeats.

    Raises:
        ValueError: an unknown name, listing the accepted tasks and groups.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    resolved: list[Task] = []
    for raw in names:
        name = raw.strip().lower()
        members = GROUPS.get(name, (name,))
        for member in members:
            if member not in TASKS:
                raise UserError(
                    f"unknown task {raw.strip()!r}; accepted tasks: {', '.join(TASKS)}; "
                    f"groups: {', '.join(GROUPS)}"
                )
            if TASKS[member] not in resolved:
                resolved.append(TASKS[member])
    if not resolved:
        raise UserError(f"no task given; accepted tasks: {', '.join(TASKS)}; groups: {', '.join(GROUPS)}")
    return resolved
