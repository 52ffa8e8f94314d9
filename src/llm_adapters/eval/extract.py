"""Answer extraction: generated text -> the answer it names, per answer type, under two named rule sets.

- `original` reproduces LLM-Adapters' `evaluate.py` / `commonsense_evaluate.py` exactly, bugs included:
  numbers: remove every comma, take the *last* match of `-?\\d+\\.?\\d*` ("1/2" gives 2, "50%" gives 50);
  AQuA: the *first* capital A-E anywhere (the "A" of "A car" counts); labels: the first case-sensitive
  match of `label1|label2|...`, inside a word or not.
- `default` fixes them. Numbers: the number named by the first "answer sentence" (from "the answer is",
  "answer:", "answer =" or "####" to the next newline or full stop) that names one: the first number after
  its last "=", else its first number; else the last number of the text. "$", "%", thousands separators, a
  trailing period and a unicode minus are tolerated, and "a/b" is a fraction. Letters: the
  first stand-alone capital A-E of the answer sentence, else a letter in option form that opens the response
  ("(B) ...", "B) ...", or "B" alone): the article of "A car travels..." is not an answer. Labels: the
  first label matched case-insensitively as a whole word. For all three, a response that loops (one unit of
  8-200 characters, 4 times in a row) ends after the 4th copy: the rest carries nothing.

`answer_complete` tells when further tokens can no longer change the `default` answer; the generation engine
stops a sequence there. It is deliberately conservative: a number waits for the end of its answer sentence
("The answer is 49 - 34" may go on "= 15"), and a letter or label for the character after it ("answer1" may
not be a whole word yet). Under the `original` rules any later number could still matter.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Iterator, Literal

import numpy as np

from llm_adapters.data.tasks import TASKS, Task
from llm_adapters.errors import UserError

Rules = Literal["default", "original"]
RULES: tuple[str, ...] = ("default", "original")
Answer = float | str | None

# The original's number pattern, applied after removing commas.
_ORIGINAL_NUMBER = re.compile(r"-?\d+\.?\d*")
# A number: optional sign (not a hyphen inside a word, as in "3-5"), digits with or without thousands
# separators, an optional decimal part, an optional "/denominator".
_NUMBER = re.compile(r"(?:(?<!\w)-)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+(?:\.\d+)?)?")
# Where an answer sentence starts ("The answer is", "Answer:", "answer =", GSM8K's "####").
_MARKER = re.compile(r"\banswer\s*(?:is\b|=|:)|####", re.IGNORECASE)
_LETTER = re.compile(r"(?<![A-Za-z])[A-E](?![A-Za-z])")
# A response that opens with its choice in option form: "(B) ...", "B) ...", or the letter alone ("B", "B.").
_OPENING_LETTER = re.compile(r"^(?:\(([A-E])\)|([A-E])\)|([A-E])\.?$)")
_WORD = r"A-Za-z0-9_"
# A loop: one unit of 8-200 characters holding 3+ distinct letters or digits, 4 times in a row (a row of
# dashes or "1 + 1 + 1 + 1" is not a loop).
_UNIT_MIN, _UNIT_MAX, _COPIES = 8, 200, 4


def _is_loop_unit(unit: str) -> bool:
    return len({c for c in unit if c.isalnum()}) >= 3


def loop_end(text: str, after: int = 0) -> int | None:
    """Where a looping response is cut: the end of the first stretch that repeats one unit 4 times in a row,
    among the stretches ending after `after` (the engine passes the length it already checked).

    Small models often repeat a sentence until the token budget runs out; what follows the 4th copy carries
    nothing, and only where the budget happens to cut the loop would change the last number.

    Example:
        >>> text = "So 2 + 3 = 5. " * 6
        >>> text[:loop_end(text)] == "So 2 + 3 = 5. " * 4
        True
    """
    if after > 0:  # a few new characters: a direct check per end position is cheapest
        for end in range(max(after + 1, _COPIES * _UNIT_MIN), len(text) + 1):
            last = text[end - 1]
            for p in range(_UNIT_MIN, min(_UNIT_MAX, end // _COPIES) + 1):
                if (text[end - 1 - p] == last  # one character first: most periods fail it, and it is cheap
                        and text[end - _COPIES * p:end - p] == text[end - (_COPIES - 1) * p:end]
                        and _is_loop_unit(text[end - p:end])):
                    return end
        return None
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    best: int | None = None
    for p in range(_UNIT_MIN, min(_UNIT_MAX, len(text) // _COPIES) + 1):
        # A stretch text[end - 4p:end] has period p iff text[i] == text[i - p] for every i in [end - 3p, end).
        same = np.concatenate(([0], np.cumsum(codes[p:] == codes[:-p])))
        window = (_COPIES - 1) * p
        for start in np.flatnonzero(same[window:] - same[:-window] == window):
            end = int(start) + _COPIES * p
            if best is not None and end >= best:
                break
            if _is_loop_unit(text[end - p:end]):
                best = end
                break
    return best


def _cut_loop(text: str) -> str:
    end = loop_end(text)
    return text if end is None else text[:end]


def _to_float(token: str) -> float | None:
    """Parse one `_NUMBER` match; None for a zero denominator."""
    token = token.replace(",", "")
    numerator, _, denominator = token.partition("/")
    if denominator:
        return float(numerator) / float(denominator) if float(denominator) != 0 else None
    return float(numerator)


def _sentence_end(tail: str, final: bool) -> int | None:
    """Index where the answer sentence in `tail` ends (a newline, or a period not starting a decimal part).

    On partial text (`final=False`) a period at the very end is undecided: "3." may become "3.5".
    """
    for match in re.finditer(r"\n|\.", tail):
        if match.group() == "\n":
            return match.start()
        following = tail[match.end():match.end() + 1]
        if following and not following.isdigit():
            return match.start()
        if not following and final:
            return match.start()
    return len(tail) if final else None


def _answer_sentences(text: str, final: bool) -> Iterator[tuple[str, bool]]:
    """Each answer sentence of `text` in order, as (sentence, finished); only the last may be unfinished."""
    for marker in _MARKER.finditer(text):
        tail = text[marker.end():]
        end = _sentence_end(tail, final)
        yield (tail, False) if end is None else (tail[:end], True)


def _sentence_number(sentence: str) -> str | None:
    """The number an answer sentence names: the first after its last "=" ("15 - 4 = 11 apples" names 11),
    else its first number.
    """
    _, equals, result = sentence.rpartition("=")
    found = _NUMBER.search(result) if equals else None
    found = found or _NUMBER.search(sentence)
    return found.group() if found else None


def _named_number(text: str, final: bool) -> tuple[str, bool] | None:
    """The number of the first answer sentence that names one, and whether that sentence is finished."""
    for sentence, finished in _answer_sentences(text, final):
        number = _sentence_number(sentence)
        if number is not None or not finished:
            return (number, finished) if number is not None else None
    return None


def _named_letter(text: str, final: bool) -> tuple[str, bool] | None:
    """The first stand-alone A-E of the first answer sentence that holds one, and whether it is settled
    (a character follows it, so it cannot be the start of a word).
    """
    for sentence, finished in _answer_sentences(text, final):
        found = _LETTER.search(sentence)
        if found:
            return found.group(), finished or found.end() < len(sentence)
        if not finished:
            return None
    return None


def _normalise(text: str) -> str:
    return text.replace("\u2212", "-")


def extract_number(text: str, rules: Rules = "default") -> float | None:
    """The number a response gives as its answer, or None.

    Example:
        >>> extract_number("12 + 30 = 42. The answer is $1,250.")
        1250.0
    """
    if rules == "original":
        found = _ORIGINAL_NUMBER.findall(text.replace(",", ""))
        return float(found[-1]) if found else None
    text = _normalise(_cut_loop(text))
    named = _named_number(text, final=True)
    if named is not None:
        return _to_float(named[0])
    numbers = _NUMBER.findall(text)
    return _to_float(numbers[-1]) if numbers else None


def extract_letter(text: str, rules: Rules = "default") -> str | None:
    """The option letter A-E a response names, or None.

    Example:
        >>> extract_letter("A car goes 3 km. The answer is (D).")
        'D'
    """
    if rules == "original":
        found = re.findall(r"A|B|C|D|E", text.strip())
        return found[0] if found else None
    text = _cut_loop(text)
    named = _named_letter(text, final=True)
    if named is not None:
        return named[0]
    opening = _OPENING_LETTER.match(text.strip())
    return next(letter for letter in opening.groups() if letter) if opening else None


def _label_pattern(labels: tuple[str, ...], final: bool) -> re.Pattern[str]:
    # Longest first, so that "answer10" would not be read as "answer1"; on partial text the whole-word test
    # needs the next character to exist.
    words = "|".join(re.escape(label) for label in sorted(labels, key=len, reverse=True))
    after = rf"(?![{_WORD}])" if final else rf"(?=[^{_WORD}])"
    return re.compile(rf"(?<![{_WORD}])({words}){after}", re.IGNORECASE)


def extract_label(text: str, labels: tuple[str, ...], rules: Rules = "default") -> str | None:
    """The first label of `labels` a response names (returned as spelled in `labels`), or None.

    Example:
        >>> extract_label("True, the correct answer is true", ("true", "false"))
        'true'
    """
    if rules == "original":
        found = re.findall("|".join(labels), text.strip())
        return found[0] if found else None
    found = _label_pattern(labels, final=True).search(_cut_loop(text))
    if not found:
        return None
    return next(label for label in labels if label.lower() == found.group(1).lower())


def _task(task: Task | str) -> Task:
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; accepted tasks: {', '.join(TASKS)}")
    return TASKS[task]


def _check_rules(rules: str) -> None:
    if rules not in RULES:
        raise UserError(f"unknown rules {rules!r}; accepted: {', '.join(RULES)}")


def extract_answer(task: Task | str, text: str, rules: Rules = "default") -> Answer:
    """The answer `text` gives for `task`: a float (number tasks), a letter, a label, or None when none is found.

    Args:
        task: a Task or its name.
        text: the generated response only (not the prompt).
        rules: "default" (fixed rules) or "original" (LLM-Adapters' rules, bugs included).

    Raises:
        ValueError: an unknown task or rule set.

    Example:
        >>> extract_answer("aqua", "Each car... The answer is (B).", rules="original")
        'E'
    """
    task = _task(task)
    _check_rules(rules)
    return _EXTRACTORS[task.answer_type](task, text, rules)


_EXTRACTORS: dict[str, Callable[[Task, str, Rules], Answer]] = {
    "number": lambda task, text, rules: extract_number(text, rules),
    "letter": lambda task, text, rules: extract_letter(text, rules),
    "label": lambda task, text, rules: extract_label(text, task.labels, rules),
}


def is_correct(task: Task | str, prediction: Answer, gold: str) -> bool:
    """Whether a prediction matches the gold answer: |pred - gold| <= 1e-3 for numbers (the original's
    tolerance), equality for letters and labels.
    """
    task = _task(task)
    if prediction is None:
        return False
    if task.answer_type == "number":
        return math.isfinite(float(prediction)) and abs(float(gold) - float(prediction)) <= 1e-3
    return prediction == gold


def answer_complete(task: Task | str, text: str, checked: int = 0) -> bool:
    """Whether no continuation of `text` can change its `default` answer (the engine's stop rule).

    True once a finished answer sentence names a number, once an answer sentence names a letter followed by
    a character, once a whole-word label has been produced, or once the text loops (`loop_end`).

    Args:
        task: a Task or its name.
        text: the response so far.
        checked: how much of `text` an earlier call already found loop-free (the engine's previous length),
            so that only the new end positions are searched for a loop.
    """
    task = _task(task)
    if loop_end(text, checked) is not None:
        return True
    if task.answer_type == "label":
        return _label_pattern(task.labels, final=False).search(text) is not None
    if task.answer_type == "number":
        named = _named_number(_normalise(text), final=False)
    else:
        named = _named_letter(text, final=False)
    return named is not None and named[1]
