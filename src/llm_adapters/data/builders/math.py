"""A Math10K-style mixture from human-written (or computed) rationales, in the math test files' output format.

Outputs read like the math test files' `output` field: "\\nA: <rationale> The answer is N." and, for AQuA,
"\\nRationale: <rationale> The answer is (X)." The sources:

- `gsm8k`: `extra/gsm8k/train.jsonl`, the human solutions with their `<<...>>` calculator annotations removed;
  the final "#### N" becomes "The answer is N." (thousands separators dropped).
- `mawps`: `dataset/mawps/trainset.json` (MWPToolkit). It has no rationale, so one is computed from the
  `equation` field ("x = (22 - 14) / 4 = 2"); a record whose equation is not `x = <arithmetic>` or does not
  reproduce its `ans` is dropped and counted. MAWPS is the parent corpus of AddSub, SingleEq and MultiArith,
  so the default overlap exclusion removes many of its items.
- `aqua`: `extra/aqua/dev.json` (AQuA-RAT dev; the train split is not in the store), instruction written like
  the AQuA test file: "<question> Answer Choices: (A) ... (E) ...".
"""
from __future__ import annotations

import ast
import functools
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
from llm_adapters.data.io import read_records, resolve_layout_dir
from llm_adapters.errors import UserError

MATH_SOURCES: tuple[str, ...] = ("gsm8k", "mawps", "aqua")
_OPS: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def format_number(value: float) -> str:
    """`12.0` -> "12"; other values in their shortest exact form ("10.333333333333334")."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def math_output(rationale: str, answer: str) -> str:
    """The math output format: "\\nA: <rationale> The answer is <answer>."."""
    rationale = " ".join(rationale.split())
    if rationale and rationale[-1] not in ".!?":
        rationale += "."
    return f"\nA: {rationale} The answer is {answer}."


def gsm8k_record(question: str, solution: str) -> Record:
    """A GSM8K training item: the human solution without calculator annotations, ending "The answer is N."

    Raises:
        ValueError: the solution has no "#### N" line or N is not a number.
    """
    body, sep, final = solution.rpartition("####")
    answer = final.strip().replace(",", "")
    if not sep or not re.fullmatch(r"-?\d+(\.\d+)?", answer):
        raise ValueError(f"no '#### <number>' final answer (got {final.strip()[:40]!r})")
    steps = [line for line in re.sub(r"<<[^>]*>>", "", body).splitlines() if line.strip()]
    return make_record(question, math_output(" ".join(steps), answer), answer)


def _evaluate(node: ast.AST) -> float:
    """Evaluate +, -, *, / over numbers; anything else raises ValueError."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError(f"unsupported expression part {ast.dump(node)[:40]}")


class _IntegralFloats(ast.NodeTransformer):
    """Write 22.0 as 22 when the expression is printed."""

    def visit_Constant(self, node: ast.Constant) -> ast.Constant:
        if isinstance(node.value, float) and node.value == int(node.value):
            return ast.copy_location(ast.Constant(int(node.value)), node)
        return node


def equation_rationale(equation: str, answer: float) -> tuple[str | None, str]:
    """A rationale "x = <expression> = <value>" from an MWPToolkit equation such as "X=((22.0-14.0)/4.0)".

    Returns:
        (rationale, "") when the equation is `x = <arithmetic>` and gives `answer` (relative tolerance 1e-6),
        else (None, the reason it was rejected).
    """
    lhs, _, rhs = equation.partition("=")
    if lhs.strip().lower() != "x" or not rhs or "=" in rhs:
        return None, "equation not x = expression"
    try:
        tree = ast.parse(rhs.strip(), mode="eval")
        value = _evaluate(tree.body)
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None, "equation not x = expression"
    if not math.isclose(value, answer, rel_tol=1e-6, abs_tol=1e-9):
        return None, "equation does not give the answer"
    expression = ast.unparse(_IntegralFloats().visit(tree))
    result = format_number(answer)
    return (f"x = {expression}" if expression == result else f"x = {expression} = {result}"), ""


def aqua_instruction(question: str, options: list[str]) -> str:
    """AQuA's instruction, as in its test file: "<question> Answer Choices: (A) 60 m (B) 61 m ..."

    Raises:
        ValueError: an option not written "A)..." (the AQuA-RAT layout).
    """
    choices = []
    for option in options:
        if not re.match(r"^[A-E]\)", option):
            raise ValueError(f"option {option[:30]!r} is not written 'A)...'")
        choices.append(f"({option[0]}) {option[2:]}")
    return f"{question} Answer Choices: {' '.join(choices)}"


def _where(path: Path, index: int, name: str) -> str:
    """How a bad record is named, as `io.read_records` names it."""
    return f"{path}, record {index}, field {name!r}"


def _gsm8k(data_dir: Path, extra: Path) -> tuple[list[Record], SourceStats]:
    path = extra / "gsm8k" / "train.jsonl"
    stats = source_stats("gsm8k", [path], "human rationales, calculator annotations removed")
    rows = read_records(path, ("question", "answer"))
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(gsm8k_record(row["question"], row["answer"]))
        except ValueError as error:
            raise UserError(f"{_where(path, i, 'answer')}: {error}") from error
    stats.read = len(rows)
    return records, stats


def _mawps(data_dir: Path, extra: Path) -> tuple[list[Record], SourceStats]:
    path = data_dir / "dataset" / "mawps" / "trainset.json"
    stats = source_stats("mawps", [path], "rationale computed from the equation")
    rows = read_records(path, ("original_text", "equation"))
    records = []
    for i, row in enumerate(rows):
        try:
            answer = float(row["ans"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"{_where(path, i, 'ans')}: not a number ({row.get('ans')!r})") from error
        rationale, reason = equation_rationale(row["equation"], answer)
        if rationale is None:
            stats.drop(reason)
            continue
        answer_text = format_number(answer)
        records.append(make_record(row["original_text"], math_output(rationale, answer_text), answer_text))
    stats.read = len(rows)
    return records, stats


def _aqua(data_dir: Path, extra: Path) -> tuple[list[Record], SourceStats]:
    path = extra / "aqua" / "dev.json"
    stats = source_stats("aqua", [path], "AQuA-RAT dev with its human rationales")
    rows = read_records(path, ("question",))
    records = []
    for i, row in enumerate(rows):
        if row.get("correct") not in ("A", "B", "C", "D", "E"):
            raise UserError(f"{_where(path, i, 'correct')}: {row.get('correct')!r} is not a letter A-E")
        try:
            instruction = aqua_instruction(row["question"], row["options"])
        except (KeyError, ValueError) as error:
            raise UserError(f"{_where(path, i, 'options')}: {error}") from error
        rationale = " ".join(row.get("rationale", "").split())
        output = f"\nRationale: {rationale} The answer is ({row['correct']})."
        records.append(make_record(instruction, output, row["correct"]))
    stats.read = len(rows)
    return records, stats


LOADERS: dict[str, Callable[[Path, Path], tuple[list[Record], SourceStats]]] = {
    "gsm8k": _gsm8k,
    "mawps": _mawps,
    "aqua": _aqua,
}


@dataclass
class MathOptions(MixOptions):
    """Options of `build_math` (each is a flag of `llm-adapters data build math`)."""

    sources: tuple[str, ...] = field(default=MATH_SOURCES, metadata={"help": "sources: gsm8k, mawps, aqua"})
    max_per_source: int | None = field(default=None, metadata={"help": "keep at most this many items per source"})

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            self.sources = tuple(s.strip() for s in self.sources.split(",") if s.strip())
        problems = [f"unknown source {s!r}" for s in self.sources if s not in LOADERS]
        if not self.sources:
            problems.append("no source given")
        self.check(problems, self.max_per_source, f"math sources: {', '.join(LOADERS)}")


def build_math(
    options: MathOptions | None = None, out: str | Path | None = None, overwrite: bool = False
) -> BuildResult:
    """Build the math mixture (GSM8K train, MAWPS train, AQuA dev) in the Math10K format.

    Args:
        options: sources, per-source maximum, seed, shuffle, overlap handling, data folders.
        out: write `<out>.json` and `<out>.provenance.json` (nothing is written if None).
        overwrite: replace existing outputs.

    Raises:
        FileNotFoundError: the data folder or a requested source file is missing.
        ValueError: a bad option, or a bad source record (named by file, index and field).
        FileExistsError: an output exists and `overwrite` is false.

    Example:
        >>> result = build_math(MathOptions(sources=("gsm8k",), max_per_source=500), "math.json")  # doctest: +SKIP
    """
    options = options or MathOptions()
    data_dir = resolve_layout_dir(options.data_dir)
    extra = resolve_extra_dir(options.extra_dir, data_dir)
    loaders = [functools.partial(LOADERS[name], data_dir, extra) for name in options.sources]
    return mix("math", options, "math", data_dir, loaders, options.max_per_source, out, overwrite)
