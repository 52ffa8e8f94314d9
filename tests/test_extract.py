"""Answer extraction: the original's rules reproduced quirk by quirk, the default rules' fixes, the stop rule."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llm_adapters.data.tasks import TASKS
from llm_adapters.eval.extract import answer_complete, extract_answer, is_correct, loop_end
from shared_data import LLM_ADAPTERS_DATA

DATA = LLM_ADAPTERS_DATA
pytestmark = pytest.mark.shared_data
BOOLQ = TASKS["boolq"].labels
NUMBERED = ("answer1", "answer2", "answer3", "answer4", "answer5")


@pytest.mark.parametrize("text, expected", [
    ("She has 1,234 apples and eats 4.", 4.0),          # last number, commas removed
    ("The answer is 1/2.", 2.0),                          # "1/2" gives 2
    ("The answer is 50%", 50.0),
    ("So 3 + 4 = 7. The answer is 7.", 7.0),              # trailing period: "7." parses as 7
    ("It costs $1,250 in total", 1250.0),
    ("The answer is 12. Then 9 more questions", 9.0),     # last number, even after the answer sentence
    ("no digits here", None),                             # the original's +inf, counted wrong
    ("from 3-5 people", -5.0),                            # "-5" taken as negative
])
def test_extract_number_original_rules_reproduce_quirks(text: str, expected: float | None) -> None:
    assert extract_answer("gsm8k", text, rules="original") == expected


@pytest.mark.parametrize("text, expected", [
    ("The answer is 12. Then 9 more questions", 12.0),    # the answer sentence wins over the last number
    ("The answer is $1,250.", 1250.0),                    # "$" and thousands separators
    ("The answer is 50%.", 50.0),
    ("The answer is 1/2.", 0.5),                           # a fraction
    ("The answer is 49 - 34 = 15 customers.", 15.0),       # the result after the last "="
    ("The answer is: 8", 8.0),
    ("#### 72", 72.0),
    ("The answer is \u22123.", -3.0),                       # unicode minus
    ("The answer is 3.5.", 3.5),
    ("The answer is unclear.\n7 apples remain, so 8", 8.0),  # the answer sentence names nothing: last number
    ("from 3-5 people", 5.0),                              # a hyphen inside a range is not a sign
    ("The answer is -4.", -4.0),
    ("nothing", None),
])
def test_extract_number_default_rules_fix_quirks(text: str, expected: float | None) -> None:
    assert extract_answer("gsm8k", text) == expected


@pytest.mark.parametrize("text, original, default", [
    ("A car goes 3 km. The answer is (D).", "A", "D"),     # "A car": the original takes the article
    ("Each option fails but the answer is C", "E", "C"),    # a capital inside a word
    ("(B) is right", "B", "B"),                              # a response that opens with its letter
    ("A car travels 60 km in 2 hours.", "A", None),          # the article is no answer
    ("B) 12 km", "B", "B"),                                   # option form
    ("C", "C", "C"),                                          # the letter alone
    ("Answer: A", "A", "A"),                                  # named by an answer sentence
    ("Each train leaves at noon. So the answer is (C).", "E", "C"),
    ("Dividing gives 4. The answer is (E)", "D", "E"),
    ("no letter here", None, None),
    ("the answer is b", None, None),                         # lower case is not a letter answer
])
def test_extract_letter_original_and_default(text: str, original: str | None, default: str | None) -> None:
    assert extract_answer("aqua", text, rules="original") == original
    assert extract_answer("aqua", text, rules="default") == default


@pytest.mark.parametrize("text, labels, original, default", [
    ("the correct answer is true", BOOLQ, "true", "true"),
    ("True", BOOLQ, None, "true"),                           # case-insensitive in the default rules
    ("untrue, so the answer is false", BOOLQ, "true", "false"),  # "true" inside "untrue" is not a word
    ("the correct answer is answer3", NUMBERED, "answer3", "answer3"),
    ("Answer2 is right", NUMBERED, None, "answer2"),
    ("the answer is option", NUMBERED, None, None),
    ("falsetrue", BOOLQ, "false", None),
])
def test_extract_label_original_and_default(text: str, labels: tuple[str, ...], original: str | None,
                                            default: str | None) -> None:
    task = "boolq" if labels == BOOLQ else "arc-e"
    assert extract_answer(task, text, rules="original") == original
    assert extract_answer(task, text, rules="default") == default


def test_extract_answer_unknown_rules_raises() -> None:
    with pytest.raises(ValueError, match="accepted: default, original"):
        extract_answer("gsm8k", "4", rules="strict")  # type: ignore[arg-type]


@pytest.mark.parametrize("task, prediction, gold, expected", [
    ("gsm8k", 576.0004, "576.0", True),
    ("gsm8k", 576.01, "576.0", False),
    ("mawps", 1.833, "1.8333333333333335", True),
    ("mawps", 1.83, "1.8333333333333335", False),
    ("gsm8k", None, "3", False),
    ("aqua", "A", "A", True),
    ("boolq", "false", "true", False),
])
def test_is_correct_tolerance_and_equality(task: str, prediction: object, gold: str, expected: bool) -> None:
    assert is_correct(task, prediction, gold) is expected


@pytest.mark.parametrize("task, text, expected", [
    ("gsm8k", "The answer is 4", False),             # may become 42
    ("gsm8k", "The answer is 4.", False),            # may become 4.5
    ("gsm8k", "The answer is 4. ", True),
    ("gsm8k", "The answer is 49 - 34 ", False),      # the sentence may go on "= 15"
    ("gsm8k", "The answer is 49 - 34 = 15\n", True),
    ("gsm8k", "The answer is not known.\nSo", False),
    ("gsm8k", "4 + 5 = 9.\n", False),                # no answer sentence: the last number may change
    ("aqua", "The answer is (D)", True),
    ("aqua", "The answer is D", False),              # may be the start of "Dividing"
    ("boolq", "true", False),                        # may become "trueness"
    ("boolq", "True.", True),
    ("arc-e", "the correct answer is answer1", False),
    ("arc-e", "the correct answer is answer1 ", True),
])
def test_answer_complete_waits_for_what_settles_the_answer(task: str, text: str, expected: bool) -> None:
    assert answer_complete(task, text) is expected


def _stored_outputs() -> list[tuple[str, str]]:
    pairs = []
    for name in ("gsm8k", "aqua", "svamp"):
        records = json.loads((DATA / TASKS[name].relpath).read_text())
        # What a model writes after its answer: more text with numbers and letters in it.
        pairs += [(name, record["output"] + "\nQ: Ann has 12 (B) pens.") for record in records[:100]]
    return pairs


def test_answer_complete_never_stops_before_the_answer_is_fixed() -> None:
    """Cut each stored rationale where the stop rule fires: the cut text and any continuation of it give the
    answer the full text gives."""
    rng = random.Random(0)
    suffixes = ["", "5", ".5", "0 apples. The answer is 9.", "\nThe answer is (A).", ",000", "= 3"]
    fired = 0
    for task, text in _stored_outputs():
        cut = next((k for k in range(1, len(text) + 1) if answer_complete(task, text[:k], k - 1)), None)
        if cut is None:
            continue
        fired += 1
        expected = extract_answer(task, text[:cut])
        assert extract_answer(task, text) == expected, (task, text)
        assert extract_answer(task, text[:cut] + rng.choice(suffixes)) == expected, (task, text[:cut])
    assert fired > 270


@pytest.mark.parametrize("name, original_accuracy", [
    ("multiarith", 93.3), ("gsm8k", 58.5), ("addsub", 93.7), ("singleeq", 95.3), ("svamp", 80.3), ("aqua", 42.9),
])
def test_original_rules_on_stored_rationales_match_the_reference(name: str, original_accuracy: float) -> None:
    """The reference (original-system.md E.1) scored the shipped ChatGPT rationales with the original rules."""
    task = TASKS[name]
    records = json.loads((DATA / task.relpath).read_text())
    correct = sum(is_correct(task, extract_answer(task, r["output"], "original"), r["answer"]) for r in records)
    assert round(100 * correct / len(records), 1) == original_accuracy


def test_default_letter_rule_on_stored_aqua_rationales_reads_their_own_answer() -> None:
    """The rationales' own answers score 48.4 % (original-system.md F.6); the first capital gives 42.9 %."""
    task = TASKS["aqua"]
    records = json.loads((DATA / task.relpath).read_text())
    correct = sum(is_correct(task, extract_answer(task, r["output"]), r["answer"]) for r in records)
    assert round(100 * correct / len(records), 1) == 48.4


@pytest.mark.parametrize("text, end", [
    # the first stretch of 4 copies may start inside a copy: ". The girls ... each" x 4 ends 2 characters early
    ("1. " + "The girls brought 60 shells each. " * 6, 1 + 34 * 4),
    ("So 150 * 75 * 6 = 150 * 75 * 6 = 150 * 75 * 6 = 150 * 75 * 6 = 150 * 75", 62),
    ("10 minutes. " * 5, 48),
    ("-" * 80 + " The answer is 4.", None),            # a rule line is not a loop: too few distinct characters
    ("1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1 = 9", None),   # neither is a long sum of ones
    ("The answer is 4. The answer is 4. The answer is 4.", None),  # three copies are not enough
])
def test_loop_end_finds_the_fourth_copy_only_of_real_loops(text: str, end: int | None) -> None:
    assert loop_end(text) == end


def test_extract_answer_ignores_what_follows_a_loop() -> None:
    looping = "So 3 + 4 = 7 apples. " * 4 + "So 3 + 4"  # the budget cut the 5th copy
    assert extract_answer("gsm8k", looping) == 7.0
    assert extract_answer("gsm8k", looping, rules="original") == 4.0
    assert answer_complete("gsm8k", "So 3 + 4 = 7 apples. " * 4)


def test_loop_end_incremental_search_agrees_with_full_scan() -> None:
    """The engine searches only new end positions; it must find the same first loop as a full scan."""
    rng = random.Random(1)
    units = ["ab1 ", "The cat 12 sat. ", "x = 3 + 4 = 7; ", "---", "\n 1. go ", "9 ", "Q: why 42? "]
    for _ in range(200):
        text = "".join(rng.choice(units) * rng.randint(1, 5) for _ in range(rng.randint(1, 8)))
        incremental = next((k for k in range(1, len(text) + 1) if loop_end(text[:k], k - 1) is not None), None)
        assert incremental == loop_end(text), text
