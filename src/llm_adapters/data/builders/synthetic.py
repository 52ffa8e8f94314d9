"""Synthetic arithmetic word problems: the project's own data, seeded, for the demo and for tests.

One- and two-step problems over small whole numbers (+, -, *, / with whole results), in varied wordings,
names and objects, with a rationale in the math output format ("\\nA: ... 7 + 5 = 12. The answer is 12.").
The same seed gives the same problems.

Train and test never share a problem: a question belongs to the `test` split when the sha256 of its text
falls in the first `test_fraction` of the hash range, whatever the seed, so a demo can train on
`--split train` and evaluate on `--split test` with no leak.
"""
from __future__ import annotations

import hashlib
import operator
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llm_adapters.data.builders.base import BuildResult, Record, finish, make_record
from llm_adapters.data.builders.math import math_output
from llm_adapters.errors import UserError

Op = Literal["+", "-", "*", "/"]
OPS: tuple[str, ...] = ("+", "-", "*", "/")
APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
Split = Literal["train", "test", "all"]

_PEOPLE = (
    ("Anna", "she"), ("Ben", "he"), ("Carla", "she"), ("David", "he"), ("Emma", "she"), ("Farid", "he"),
    ("Grace", "she"), ("Hugo", "he"), ("Ines", "she"), ("Jack", "he"), ("Kofi", "he"), ("Lena", "she"),
    ("Mia", "she"), ("Noah", "he"), ("Olga", "she"), ("Pedro", "he"), ("Rosa", "she"), ("Sam", "he"),
)
_OBJECTS = (
    "apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells", "balloons", "cards",
    "coins", "flowers", "eggs", "toy cars", "candies", "buttons",
)
# First step: a sentence that sets up `a op b`, and its rationale. `/` shares among b people, so it only ends
# a problem. Fields: {name} {pron} {obj} {a} {b} {r}.
_FIRST: dict[str, tuple[tuple[str, str], ...]] = {
    "+": (
        ("{name} has {a} {obj}. {Pron} gets {b} more {obj}.",
         "{name} has {a} {obj} and gets {b} more, so {a} + {b} = {r}."),
        ("{name} picks {a} {obj} in the morning and {b} {obj} in the afternoon.",
         "{name} picks {a} and then {b}, so {a} + {b} = {r}."),
    ),
    "-": (
        ("{name} has {a} {obj}. {Pron} gives {b} {obj} to a friend.",
         "{name} has {a} {obj} and gives away {b}, so {a} - {b} = {r}."),
        ("{name} had {a} {obj} and lost {b} of them.",
         "{name} had {a} {obj} and lost {b}, so {a} - {b} = {r}."),
    ),
    "*": (
        ("{name} buys {a} bags of {obj}. Each bag holds {b} {obj}.",
         "{a} bags with {b} {obj} each hold {a} * {b} = {r} {obj}."),
        ("{name} has {a} boxes with {b} {obj} in each box.",
         "{a} boxes of {b} {obj} make {a} * {b} = {r} {obj}."),
    ),
    "/": (
        ("{name} has {a} {obj} and shares them equally among {b} friends.",
         "{a} {obj} shared among {b} friends is {a} / {b} = {r} each."),
        ("{name} packs {a} {obj} equally into {b} boxes.",
         "{a} {obj} in {b} equal boxes is {a} / {b} = {r} per box."),
    ),
}
# Second step on the running amount {x}: fields {pron} {obj} {x} {c} {r}.
_SECOND: dict[str, tuple[str, str]] = {
    "+": ("Then {pron} gets {c} more {obj}.", "Then {pron} gets {c} more, so {x} + {c} = {r}."),
    "-": ("Then {pron} gives away {c} {obj}.", "Then {pron} gives away {c}, so {x} - {c} = {r}."),
    "*": ("Then the number of {obj} {pron} has becomes {c} times as large.", "{c} times as many is {x} * {c} = {r}."),
    "/": ("Then {pron} shares them equally among {c} friends.", "Shared among {c} friends, {x} / {c} = {r} each."),
}
_ASK_TOTAL = "How many {obj} does {name} have now?"
_ASK_SHARE = ("How many {obj} does each friend get?", "How many {obj} are in each box?")


@dataclass(frozen=True)
class Step:
    """One operation: a op b = result."""

    a: int
    op: str
    b: int
    result: int


@dataclass(frozen=True)
class Problem:
    """A generated problem with the operations that solve it."""

    question: str
    rationale: str
    steps: tuple[Step, ...]

    @property
    def answer(self) -> int:
        return self.steps[-1].result

    def record(self) -> Record:
        return make_record(self.question, math_output(self.rationale, str(self.answer)), str(self.answer))


@dataclass
class SyntheticOptions:
    """Options of `build_synthetic_arithmetic` (flags of `llm-adapters data build synthetic-arithmetic`)."""

    n: int = field(default=500, metadata={"help": "number of problems"})
    seed: int = field(default=0, metadata={"help": "generator seed; the same seed gives the same problems"})
    steps: tuple[int, ...] = field(default=(1, 2), metadata={"help": "numbers of steps to draw from: 1, 2"})
    ops: tuple[str, ...] = field(default=OPS, metadata={"help": "operations to use: + - * /"})
    max_number: int = field(default=20, metadata={"help": "largest operand of + and - (factors stay <= 9)"})
    split: Split = field(default="train", metadata={"help": "train, test (held out by question hash) or all"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of the question space held out as test"})

    def __post_init__(self) -> None:
        if isinstance(self.steps, (str, int)):
            self.steps = tuple(int(s) for s in str(self.steps).split(","))
        if isinstance(self.ops, str):
            self.ops = tuple(self.ops.replace(",", " ").split())
        problems = []
        if self.n < 1:
            problems.append(f"n must be at least 1, got {self.n}")
        if not self.steps or any(s not in (1, 2) for s in self.steps):
            problems.append(f"steps {self.steps!r}; accepted: 1, 2")
        if not self.ops or any(o not in OPS for o in self.ops):
            problems.append(f"ops {self.ops!r}; accepted: {' '.join(OPS)}")
        if self.max_number < 5:
            problems.append(f"max_number must be at least 5, got {self.max_number}")
        if self.split not in ("train", "test", "all"):
            problems.append(f"split {self.split!r}; accepted: train, test, all")
        if not 0 < self.test_fraction < 1:
            problems.append(f"test_fraction must be between 0 and 1, got {self.test_fraction}")
        if problems:
            raise UserError("; ".join(problems))


def in_test_split(question: str, test_fraction: float = 0.2) -> bool:
    """Whether a question is held out: decided by its text alone, so no seed can leak it into training."""
    digest = hashlib.sha256(" ".join(question.lower().split()).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < test_fraction * 2**64


def _operands(op: str, rng: random.Random, top: int) -> tuple[int, int]:
    if op == "+":
        return rng.randint(2, top), rng.randint(2, top)
    if op == "-":
        a = rng.randint(4, top)
        return a, rng.randint(2, a - 1)  # from 2: no "1 pencils"
    if op == "*":
        return rng.randint(2, 9), rng.randint(2, 9)
    divisor = rng.randint(2, 9)
    return divisor * rng.randint(2, 9), divisor


def _second_operand(op: str, x: int, rng: random.Random, top: int) -> int | None:
    """An operand for `x op c` with a whole, positive, small result; None if there is none."""
    if op == "+":
        return rng.randint(2, top)
    if op == "-":
        return rng.randint(2, x - 1) if x > 2 else None
    if op == "*":
        factors = [c for c in (2, 3, 4) if x * c <= 100]
        return rng.choice(factors) if factors else None
    divisors = [d for d in range(2, 10) if x % d == 0 and x // d > 1]
    return rng.choice(divisors) if divisors else None


def _draw(rng: random.Random, options: SyntheticOptions) -> Problem | None:
    """One random problem, or None when the drawn operations do not fit (the caller draws again)."""
    name, pron = rng.choice(_PEOPLE)
    fill = {"name": name, "pron": pron, "Pron": pron.capitalize(), "obj": rng.choice(_OBJECTS)}
    n_steps = rng.choice(options.steps)
    first_ops = [o for o in options.ops if o != "/" or n_steps == 1]
    if not first_ops:
        return None
    op = rng.choice(first_ops)
    a, b = _operands(op, rng, options.max_number)
    steps = [Step(a, op, b, APPLY[op](a, b))]
    variant = rng.randrange(len(_FIRST[op]))
    sentence, reason = _FIRST[op][variant]
    question, rationale = [sentence.format(a=a, b=b, **fill)], [reason.format(a=a, b=b, r=steps[0].result, **fill)]
    if n_steps == 2:
        op = rng.choice(options.ops)
        x = steps[0].result
        c = _second_operand(op, x, rng, options.max_number)
        if c is None:
            return None
        steps.append(Step(x, op, c, APPLY[op](x, c)))
        sentence, reason = _SECOND[op]
        question.append(sentence.format(c=c, **fill))
        rationale.append(reason.format(x=x, c=c, r=steps[1].result, **fill))
        variant = 0
    ask = _ASK_SHARE[variant] if steps[-1].op == "/" else _ASK_TOTAL
    question.append(ask.format(**fill))
    return Problem(" ".join(question), " ".join(rationale), tuple(steps))


def generate_problems(options: SyntheticOptions | None = None) -> list[Problem]:
    """`options.n` distinct problems of `options.split`, deterministic for `options.seed`.

    Raises:
        ValueError: the options allow fewer distinct problems than asked for.
    """
    options = options or SyntheticOptions()
    rng = random.Random(options.seed)
    problems: list[Problem] = []
    seen: set[str] = set()
    for _ in range(200 * options.n + 1000):
        problem = _draw(rng, options)
        if problem is None or problem.question in seen:
            continue
        held_out = in_test_split(problem.question, options.test_fraction)
        if options.split == "all" or held_out == (options.split == "test"):
            seen.add(problem.question)
            problems.append(problem)
            if len(problems) == options.n:
                return problems
    raise UserError(f"found only {len(problems)} distinct problems for these options; lower n or widen ops/steps")


def build_synthetic_arithmetic(
    options: SyntheticOptions | None = None, out: str | Path | None = None, overwrite: bool = False
) -> BuildResult:
    """Generate synthetic word problems as LLM-Adapters records (and write them with provenance if `out`).

    Raises:
        ValueError: bad options.
        FileExistsError: an output exists and `overwrite` is false.

    Example:
        >>> result = build_synthetic_arithmetic(SyntheticOptions(n=3, seed=1))
        >>> result.records[0]["output"].endswith(f"The answer is {result.records[0]['answer']}.")
        True
    """
    options = options or SyntheticOptions()
    problems = generate_problems(options)
    counts: dict[str, int] = {}
    for problem in problems:
        key = f"{len(problem.steps)} step: " + " then ".join(s.op for s in problem.steps)
        counts[key] = counts.get(key, 0) + 1
    extra = {"generated": dict(sorted(counts.items())), "split_rule": "sha256(question) < test_fraction * 2^64"}
    return finish("synthetic-arithmetic", options, [p.record() for p in problems], [], out, overwrite, extra)
