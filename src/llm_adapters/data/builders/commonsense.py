"""The Commonsense170K recipe: the eight commonsense tasks' training splits in their evaluation templates.

Each record's instruction is written exactly as the task's test file writes it (`dataset/<task>/test.json`),
and its output is "the correct answer is <label>" (reference E.2). Sources, from whatever is present:

| task | source | form |
|---|---|---|
| boolq, arc-e, arc-c, obqa | `dataset/<folder>/train.json` | already in format; validated, reused as is |
| piqa | `extra/piqa/train_sample_llm_adapters.json` | in format; a 312-item sample of the 16,113 |
| siqa | `extra/social_i_qa/socialiqa-train-dev.zip`: train.jsonl + its labels | raw; `dev.jsonl` (test) never read |
| winogrande | `extra/winogrande/train_<size>.jsonl` + labels | raw; one size (nested splits, never concatenated) |
| hellaswag | `extra/hellaswag/hellaswag_train.jsonl` | raw; a 3,368-item prefix of the official train file |
"""
from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from llm_adapters.data.builders.base import (
    BuildResult,
    MixOptions,
    Record,
    SourceStats,
    make_record,
    mix,
    resolve_extra_dir,
    source_stats,
)
from llm_adapters.data.io import read_jsonl_text, read_records, resolve_layout_dir
from llm_adapters.errors import MissingInputError, UserError
from llm_adapters.data.tasks import GROUPS, TASKS, resolve_tasks
from llm_adapters.data.templates import choice_response

WinograndeSize = Literal["xs", "s", "m", "l"]
WINOGRANDE_SIZES: tuple[str, ...] = ("xs", "s", "m", "l")  # nested official splits; xl (40k) is not in the store
SIQA_MEMBERS = ("socialiqa-train-dev/train.jsonl", "socialiqa-train-dev/train-labels.lst")


@dataclass(frozen=True)
class ChoiceFormat:
    """How one task writes a multiple-choice instruction (copied from its test file)."""

    header: str  # the sentence before the question
    word: str  # option label: "Answer1: ...", "Solution1: ..."
    option_sep: str  # between options
    format_sep: str  # between the last option and "Answer format:"


_ANSWER = ChoiceFormat("Please choose the correct answer to the question: ", "Answer", " ", "\n\n")
FORMATS: dict[str, ChoiceFormat] = {
    "piqa": ChoiceFormat("Please choose the correct solution to the question: ", "Solution", "\n\n", "\n\n"),
    "siqa": _ANSWER,
    "hellaswag": ChoiceFormat(
        "Please choose the correct ending to complete the given sentence: ", "Ending", " ", "\n\n"
    ),
    # WinoGrande's test file has no blank line before "Answer format:".
    "winogrande": ChoiceFormat(
        "Please choose the correct answer to fill in the blank to complete the given sentence: ", "Option", " ", " "
    ),
    "arc-e": _ANSWER,
    "arc-c": _ANSWER,
    "obqa": _ANSWER,
}
BOOLQ_HEADER = "Please answer the following question with true or false, question: "
BOOLQ_FORMAT = "\n\nAnswer format: true/false"


def choice_instruction(task: str, question: str, options: list[str]) -> str:
    """The instruction of a multiple-choice item, as the task's test file writes it.

    Example:
        >>> choice_instruction("winogrande", "Sarah was better than Maria so _ won.", ["Sarah", "Maria"])
        'Please choose the correct answer to fill in the blank to complete the given sentence: Sarah was better \
than Maria so _ won.\\n\\nOption1: Sarah Option2: Maria Answer format: option1/option2'
    """
    fmt = FORMATS[task]
    listed = fmt.option_sep.join(f"{fmt.word}{i}: {option}" for i, option in enumerate(options, start=1))
    labels = "/".join(f"{fmt.word.lower()}{i}" for i in range(1, len(options) + 1))
    return f"{fmt.header}{question}\n\n{listed}{fmt.format_sep}Answer format: {labels}"


def boolq_instruction(question: str) -> str:
    """BoolQ's instruction (no passage, as in the original; the question mark is added)."""
    return f"{BOOLQ_HEADER}{question}?{BOOLQ_FORMAT}"


def label_record(instruction: str, label: str) -> Record:
    """A commonsense record: output "the correct answer is <label>", answer "<label>"."""
    return make_record(instruction, choice_response(label), label)


def _check_in_format(task: str, record: dict, path: Path, index: int) -> None:
    """Raise ValueError naming file, index and field if an in-format record breaks the task's template."""
    where = f"{path}, record {index}"
    header = BOOLQ_HEADER if task == "boolq" else FORMATS[task].header
    if not record["instruction"].startswith(header):
        raise UserError(f"{where}, field 'instruction': does not start with {header!r}")
    if "Answer format: " not in record["instruction"]:
        raise UserError(f"{where}, field 'instruction': has no 'Answer format:' line")
    if record["answer"] not in TASKS[task].labels:
        accepted = ", ".join(TASKS[task].labels)
        raise UserError(f"{where}, field 'answer': {record['answer']!r} is not one of {accepted}")
    if record["output"] != choice_response(record["answer"]):
        raise UserError(f"{where}, field 'output': {record['output']!r} is not 'the correct answer is <answer>'")
    if record["input"] != "":
        raise UserError(f"{where}, field 'input': not empty")


def _in_format(task: str, path: Path, note: str = "") -> tuple[list[Record], SourceStats]:
    stats = source_stats(task, [path], note)
    records = read_records(path, ("instruction", "output", "answer"))
    for i, record in enumerate(records):
        _check_in_format(task, record, path, i)
    stats.read = len(records)
    return [make_record(r["instruction"], r["output"], r["answer"]) for r in records], stats


def _labelled(rows: list[dict], labels: list[str], path: Path, accepted: tuple[str, ...]) -> list[tuple[dict, str]]:
    """Pair raw rows with their label lines; a count mismatch or an unknown label is an error."""
    if len(rows) != len(labels):
        raise UserError(f"{path}: {len(rows)} items but {len(labels)} labels")
    for i, label in enumerate(labels):
        if label not in accepted:
            raise UserError(f"{path}: label line {i + 1} is {label!r}; accepted: {', '.join(accepted)}")
    return list(zip(rows, labels))


def _siqa(extra: Path, options: CommonsenseOptions) -> tuple[list[Record], SourceStats]:
    path = extra / "social_i_qa" / "socialiqa-train-dev.zip"
    note = "train.jsonl + train-labels.lst read inside the zip; dev.jsonl is the test set"
    stats = source_stats("siqa", [path], note)
    with zipfile.ZipFile(path) as archive:
        text = archive.read(SIQA_MEMBERS[0]).decode("utf-8")
        labels = archive.read(SIQA_MEMBERS[1]).decode("utf-8").split()
    rows = read_jsonl_text(path / SIQA_MEMBERS[0], text, ("context", "question", "answerA", "answerB", "answerC"))
    records = []
    for row, label in _labelled(rows, labels, path / SIQA_MEMBERS[1], ("1", "2", "3")):
        question = f"{row['context']} {row['question']}"
        answers = [row["answerA"], row["answerB"], row["answerC"]]
        records.append(label_record(choice_instruction("siqa", question, answers), f"answer{label}"))
    stats.read = len(rows)
    return records, stats


def _winogrande(extra: Path, options: CommonsenseOptions) -> tuple[list[Record], SourceStats]:
    size = options.winogrande_size
    path = extra / "winogrande" / f"train_{size}.jsonl"
    label_path = path.with_name(f"train_{size}-labels.lst")
    stats = source_stats("winogrande", [path, label_path], f"size {size} (nested official splits, not concatenated)")
    rows = read_records(path, ("sentence", "option1", "option2"))
    labels = label_path.read_text(encoding="utf-8").split()
    records = []
    for i, (row, label) in enumerate(_labelled(rows, labels, label_path, ("1", "2"))):
        if "answer" in row and str(row["answer"]) != label:
            raise UserError(f"{path}, record {i}, field 'answer': {row['answer']!r} but the label file says {label}")
        instruction = choice_instruction("winogrande", row["sentence"], [row["option1"], row["option2"]])
        records.append(label_record(instruction, f"option{label}"))
    stats.read = len(rows)
    return records, stats


def _hellaswag(extra: Path, options: CommonsenseOptions) -> tuple[list[Record], SourceStats]:
    path = extra / "hellaswag" / "hellaswag_train.jsonl"
    stats = source_stats("hellaswag", [path], "a prefix of the official train file (ActivityNet only)")
    rows = read_records(path, ("activity_label", "ctx"))
    records = []
    for i, row in enumerate(rows):
        endings, label = row.get("endings"), row.get("label")
        if not isinstance(endings, list) or len(endings) != 4:
            raise UserError(f"{path}, record {i}, field 'endings': not a list of 4 endings")
        if str(label) not in ("0", "1", "2", "3"):
            raise UserError(f"{path}, record {i}, field 'label': {label!r} is not one of 0, 1, 2, 3")
        question = f"{row['activity_label']}: {row['ctx']}"
        records.append(label_record(choice_instruction("hellaswag", question, endings), f"ending{int(label) + 1}"))
    stats.read = len(rows)
    return records, stats


def _dataset_train(task: str) -> Callable[[Path, CommonsenseOptions], tuple[list[Record], SourceStats]]:
    def load(data_dir: Path, options: CommonsenseOptions) -> tuple[list[Record], SourceStats]:
        return _in_format(task, data_dir / "dataset" / TASKS[task].folder / "train.json")

    return load


def _piqa(extra: Path, options: CommonsenseOptions) -> tuple[list[Record], SourceStats]:
    return _in_format("piqa", extra / "piqa" / "train_sample_llm_adapters.json", "a 312-item sample of 16,113")


# task -> (which folder it reads from, loader)
SOURCES: dict[str, tuple[Literal["data", "extra"], Callable]] = {
    "boolq": ("data", _dataset_train("boolq")),
    "piqa": ("extra", _piqa),
    "siqa": ("extra", _siqa),
    "hellaswag": ("extra", _hellaswag),
    "winogrande": ("extra", _winogrande),
    "arc-e": ("data", _dataset_train("arc-e")),
    "arc-c": ("data", _dataset_train("arc-c")),
    "obqa": ("data", _dataset_train("obqa")),
}


@dataclass
class CommonsenseOptions(MixOptions):
    """Options of `build_commonsense` (each is a flag of `llm-adapters data build commonsense`)."""

    tasks: tuple[str, ...] = field(default=GROUPS["commonsense"], metadata={"help": "commonsense tasks to include"})
    max_per_task: int | None = field(default=None, metadata={"help": "keep at most this many items per task"})
    winogrande_size: WinograndeSize = field(default="l", metadata={"help": "WinoGrande train size: xs, s, m, l"})

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            self.tasks = tuple(self.tasks.split(","))
        self.tasks = tuple(task.name for task in resolve_tasks(self.tasks))
        problems = [f"task {t!r} is not a commonsense task" for t in self.tasks if t not in SOURCES]
        if self.winogrande_size not in WINOGRANDE_SIZES:
            problems.append(f"winogrande_size {self.winogrande_size!r}; accepted: {', '.join(WINOGRANDE_SIZES)}")
        self.check(problems, self.max_per_task, f"commonsense tasks: {', '.join(SOURCES)}")


def build_commonsense(
    options: CommonsenseOptions | None = None, out: str | Path | None = None, overwrite: bool = False
) -> BuildResult:
    """Build the Commonsense170K-style mixture from the training splits present.

    Args:
        options: tasks, per-task maximum, seed, shuffle, WinoGrande size, overlap handling, data folders.
        out: write `<out>.json` and `<out>.provenance.json` (nothing is written if None).
        overwrite: replace existing outputs.

    Raises:
        FileNotFoundError: the data folder or a requested task's source file is missing (leave the task out).
        ValueError: a bad option, or a bad source record (named by file, index and field).
        FileExistsError: an output exists and `overwrite` is false.

    Example:
        >>> options = CommonsenseOptions(tasks=("boolq", "siqa"), max_per_task=100)
        >>> result = build_commonsense(options)  # doctest: +SKIP
    """
    options = options or CommonsenseOptions()
    data_dir = resolve_layout_dir(options.data_dir)
    folders = {"data": data_dir, "extra": resolve_extra_dir(options.extra_dir, data_dir)}
    loaders = [functools.partial(_load, task, folders[SOURCES[task][0]], options) for task in options.tasks]
    return mix("commonsense", options, "commonsense", data_dir, loaders, options.max_per_task, out, overwrite)


def _load(task: str, folder: Path, options: CommonsenseOptions) -> tuple[list[Record], SourceStats]:
    try:
        return SOURCES[task][1](folder, options)
    except FileNotFoundError as error:
        raise MissingInputError(f"{task}: {error}; leave the task out with --tasks") from error
