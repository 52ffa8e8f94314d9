"""Training-set builders: formats against the test files, provenance, safe writing, synthetic arithmetic."""
from __future__ import annotations

import json
import operator
import re
import zipfile
from pathlib import Path

import pytest

from llm_adapters.cli import main
from llm_adapters.data.builders.base import output_paths
from llm_adapters.data.io import resolve_layout_dir
from llm_adapters.data.builders.commonsense import (
    BOOLQ_HEADER,
    FORMATS,
    CommonsenseOptions,
    boolq_instruction,
    build_commonsense,
    choice_instruction,
    label_record,
)
from llm_adapters.data.builders.math import (
    MathOptions,
    aqua_instruction,
    build_math,
    equation_rationale,
    gsm8k_record,
)
from llm_adapters.data.builders.synthetic import (
    SyntheticOptions,
    build_synthetic_arithmetic,
    generate_problems,
    in_test_split,
)
from llm_adapters.data.io import ENV_DATA, sha256_file
from llm_adapters.data.overlap import match_tasks
from llm_adapters.data.tasks import GROUPS, TASKS, resolve_tasks
from shared_data import LLM_ADAPTERS_DATA, SHARED_DATASETS

SHARED, DATA = SHARED_DATASETS, LLM_ADAPTERS_DATA
needs_data = pytest.mark.shared_data
MATH_OUTPUT = re.compile(r"^\n(A|Rationale): .+ The answer is (\S+)\.$", re.S)


@pytest.fixture(autouse=True)
def _shared_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA, str(SHARED))


def _test_records(task: str) -> list[dict]:
    return json.loads((DATA / TASKS[task].relpath).read_text(encoding="utf-8"))


# ---- commonsense templates: our instruction for a test-like raw record equals the test file's -------------


@needs_data
def test_siqa_template_regenerates_the_test_file_byte_for_byte() -> None:
    # The SIQA test file is the official dev split, which is in the zip: rebuild every test record from it.
    with zipfile.ZipFile(SHARED / "extra/social_i_qa/socialiqa-train-dev.zip") as archive:
        rows = [json.loads(line) for line in archive.read("socialiqa-train-dev/dev.jsonl").decode().splitlines()]
        labels = archive.read("socialiqa-train-dev/dev-labels.lst").decode().split()
    rebuilt = [
        label_record(
            choice_instruction("siqa", f"{r['context']} {r['question']}", [r["answerA"], r["answerB"], r["answerC"]]),
            f"answer{label}",
        )
        for r, label in zip(rows, labels)
    ]
    assert rebuilt == _test_records("siqa")


def _parse_choice(task: str, instruction: str) -> tuple[str, list[str]]:
    """Split a test instruction into question and options using only the header and option word."""
    fmt = FORMATS[task]
    assert instruction.startswith(fmt.header)
    body = instruction[len(fmt.header):]
    question, _, rest = body.partition(f"\n\n{fmt.word}1: ")
    listed = rest[: rest.rindex("Answer format: ")]
    listed = listed[: len(listed) - len(fmt.format_sep)]
    options = re.split(re.escape(fmt.option_sep) + fmt.word + r"\d: ", listed)
    return question, options


@needs_data
@pytest.mark.parametrize("task", ["piqa", "siqa", "winogrande", "arc-e", "arc-c", "obqa"])
def test_choice_instruction_rebuilds_every_test_instruction(task: str) -> None:
    records = _test_records(task)
    for record in records:
        question, options = _parse_choice(task, record["instruction"])
        assert choice_instruction(task, question, options) == record["instruction"]
        assert label_record(record["instruction"], record["answer"]) == record
    option_counts = {len(_parse_choice(task, r["instruction"])[1]) for r in records}
    assert max(option_counts) == len(TASKS[task].labels) or task.startswith("arc")


@needs_data
def test_boolq_instruction_rebuilds_the_test_instructions() -> None:
    for record in _test_records("boolq"):
        question = record["instruction"][len(BOOLQ_HEADER):].split("?\n\nAnswer format:")[0]
        assert boolq_instruction(question) == record["instruction"]


def test_hellaswag_instruction_follows_the_documented_template() -> None:
    # No HellaSwag test file is stored; reference E.2 and a public copy give this layout.
    text = choice_instruction("hellaswag", "Playing drums: People stand behind drums. A man", ["a", "b", "c", "d"])
    assert text == (
        "Please choose the correct ending to complete the given sentence: Playing drums: People stand behind drums. "
        "A man\n\nEnding1: a Ending2: b Ending3: c Ending4: d\n\nAnswer format: ending1/ending2/ending3/ending4"
    )


# ---- commonsense builder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def commonsense() -> object:
    options = CommonsenseOptions(max_per_task=200, winogrande_size="m", data_dir=str(SHARED))
    return build_commonsense(options)


@needs_data
def test_build_commonsense_records_have_the_commonsense_format(commonsense) -> None:
    by_header: dict[str, int] = {}
    for record in commonsense.records:
        assert set(record) == {"instruction", "input", "output", "answer"} and record["input"] == ""
        assert record["output"] == f"the correct answer is {record['answer']}"
        assert record["instruction"].rsplit("Answer format: ", 1)[1].split("/").count(record["answer"]) == 1
        header = record["instruction"].split(":")[0]
        by_header[header] = by_header.get(header, 0) + 1
    assert len(by_header) == 5  # the five header sentences of the eight tasks


@needs_data
def test_build_commonsense_provenance_accounts_for_every_source_item(commonsense) -> None:
    sources = {s["name"]: s for s in commonsense.provenance["sources"]}
    assert list(sources) == list(GROUPS["commonsense"])
    for s in sources.values():
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in s["files"].values())
        assert s["kept"] + s["capped"] + s["overlapping"] + sum(s["dropped"].values()) == s["read"]
        assert s["kept"] == 200
    assert sources["winogrande"]["read"] == 2558  # size m alone, never the nested sizes together
    assert sources["siqa"]["read"] == 33410 and "dev.jsonl" not in json.dumps(sources["siqa"]["files"])
    assert commonsense.provenance["overlap"]["not_checked"] == ["hellaswag"]  # no local HellaSwag test file
    assert len(commonsense.records) == 8 * 200


def _tiny_data_dir(tmp_path: Path) -> Path:
    """A data folder with a 3-item boolq test set and a train set holding 2 of them in other case/spacing."""
    test = [label_record(boolq_instruction(q), "true") for q in ("is the sky blue", "do cats bark", "is ice cold")]
    train = [label_record(boolq_instruction(q), "false") for q in ("IS THE SKY  BLUE", "is a fish a bird")]
    train.append(label_record(boolq_instruction("Is ice  cold"), "true"))
    folder = tmp_path / "dataset" / "boolq"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps(test))
    (folder / "train.json").write_text(json.dumps(train))
    return tmp_path


def test_build_commonsense_excludes_planted_test_questions_unless_kept(tmp_path: Path) -> None:
    data = _tiny_data_dir(tmp_path)
    result = build_commonsense(CommonsenseOptions(tasks=("boolq",), data_dir=str(data)))
    assert [r["instruction"] for r in result.records] == [boolq_instruction("is a fish a bird")]
    assert result.provenance["sources"][0]["test_overlaps"] == {"boolq": 2}
    kept = build_commonsense(CommonsenseOptions(tasks=("boolq",), data_dir=str(data), keep_overlap=True))
    assert len(kept.records) == 3 and kept.provenance["overlap"]["excluded"] is False


def test_build_commonsense_names_the_bad_record(tmp_path: Path) -> None:
    data = _tiny_data_dir(tmp_path)
    train = data / "dataset" / "boolq" / "train.json"
    records = json.loads(train.read_text())
    records[1]["output"] = "true"
    train.write_text(json.dumps(records))
    message = f"{train}, record 1, field 'output': 'true' is not 'the correct answer is <answer>'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_commonsense(CommonsenseOptions(tasks=("boolq",), data_dir=str(data)))


def test_commonsense_options_report_every_problem_at_once() -> None:
    with pytest.raises(ValueError) as error:
        CommonsenseOptions(tasks="gsm8k", winogrande_size="xl", max_per_task=0)
    assert all(part in str(error.value) for part in ("gsm8k", "winogrande_size", "at least 1"))


# ---- math builder -----------------------------------------------------------------------------------------


def test_gsm8k_record_drops_calculator_notes_and_ends_with_the_answer() -> None:
    solution = "She sold 48/2 = <<48/2=24>>24 clips.\nIn all 48+24 = <<48+24=72>>1,072 clips\n#### 1,072"
    record = gsm8k_record("How many clips?", solution)
    assert record["output"] == "\nA: She sold 48/2 = 24 clips. In all 48+24 = 1,072 clips. The answer is 1072."
    assert record["answer"] == "1072"
    with pytest.raises(ValueError, match="####"):
        gsm8k_record("q", "no final answer")


def test_equation_rationale_reproduces_the_answer_or_says_why_not() -> None:
    assert equation_rationale("X=((22.0-14.0)/4.0)", 2.0) == ("x = (22 - 14) / 4 = 2", "")
    assert equation_rationale("x=5.91+8.11", 14.02) == ("x = 5.91 + 8.11 = 14.02", "")
    assert equation_rationale("x=34*4", 134.0) == (None, "equation does not give the answer")
    assert equation_rationale("X=0.32=0.21", 0.53) == (None, "equation not x = expression")
    assert equation_rationale("(7.0*x)+4.0=(3.0*x)-20.0", -6.0) == (None, "equation not x = expression")


@needs_data
def test_aqua_instruction_matches_the_aqua_test_file() -> None:
    raw = json.loads((DATA / "dataset/AQuA/AQuA.json").read_text(encoding="utf-8"))
    test = {r["instruction"] for r in _test_records("aqua")}
    rebuilt = [aqua_instruction(r["sQuestion"], r["options"]) for r in raw]
    assert sum(text in test for text in rebuilt) >= 244  # the other 10 differ only in spacing inside options


@needs_data
def test_math_output_format_is_the_test_files_format() -> None:
    # The test files' (machine-written) outputs sometimes add units ("The answer is 16 hours."); ours never do.
    loose = re.compile(r"^\n(A|Rationale): .+The answer is .+\.$", re.S)
    for task in ("gsm8k", "addsub", "aqua"):
        outputs = [r["output"] for r in _test_records(task) if r["output"]]
        assert sum(bool(loose.match(o)) for o in outputs) / len(outputs) > 0.95


@needs_data
def test_build_math_formats_counts_and_no_test_leak() -> None:
    result = build_math(MathOptions(max_per_source=300, data_dir=str(DATA)))
    for record in result.records:
        match = MATH_OUTPUT.match(record["output"])
        assert match and record["input"] == ""
        shown = match.group(2).strip("()")
        assert shown == record["answer"]
        assert re.fullmatch(r"[A-E]", shown) if match.group(1) == "Rationale" else float(shown) == float(shown)
    sources = {s["name"]: s for s in result.provenance["sources"]}
    assert sources["mawps"]["dropped"] == {"equation not x = expression": 19, "equation does not give the answer": 49}
    assert sources["mawps"]["overlapping"] > 1000  # MAWPS is the parent corpus of AddSub, SingleEq, MultiArith
    assert sources["gsm8k"]["overlapping"] == 0 and sources["aqua"]["read"] == 254
    report, _, _ = match_tasks([r["instruction"] for r in result.records], resolve_tasks("math"), DATA, "alnum")
    assert sum(t.train_matched for t in report) == 0


# ---- synthetic arithmetic ---------------------------------------------------------------------------------

_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def test_synthetic_problems_are_deterministic_for_a_seed() -> None:
    first = build_synthetic_arithmetic(SyntheticOptions(n=200, seed=3)).records
    assert first == build_synthetic_arithmetic(SyntheticOptions(n=200, seed=3)).records
    assert first != build_synthetic_arithmetic(SyntheticOptions(n=200, seed=4)).records
    assert len({r["instruction"] for r in first}) == 200


def test_synthetic_answers_recompute_independently() -> None:
    for problem in generate_problems(SyntheticOptions(n=300, seed=1)):
        value = problem.steps[0].a
        for step in problem.steps:
            assert step.a == value  # each step works on the previous result
            value = _APPLY[step.op](value, step.b)
            assert value == int(value) and value > 0
        record = problem.record()
        assert record["answer"] == str(int(value))
        numbers = [int(n) for n in re.findall(r"\d+", record["instruction"])]
        assert [problem.steps[0].a, problem.steps[0].b] + [s.b for s in problem.steps[1:]] == numbers
        equations = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", record["output"])
        assert len(equations) == len(problem.steps)
        assert all(_APPLY[op](int(a), int(b)) == int(r) for a, op, b, r in equations)
        assert MATH_OUTPUT.match(record["output"]).group(2) == record["answer"]


def test_synthetic_train_and_test_splits_never_share_a_question() -> None:
    train = build_synthetic_arithmetic(SyntheticOptions(n=400, seed=0)).records
    test = build_synthetic_arithmetic(SyntheticOptions(n=100, seed=0, split="test")).records
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}
    assert all(in_test_split(r["instruction"]) for r in test)


def test_synthetic_options_restrict_steps_and_ops() -> None:
    problems = generate_problems(SyntheticOptions(n=50, steps=(1,), ops=("+",)))
    assert all(len(p.steps) == 1 and p.steps[0].op == "+" for p in problems)
    with pytest.raises(ValueError, match="steps"):
        SyntheticOptions(steps="3")


# ---- writing, reading, CLI --------------------------------------------------------------------------------


def test_builder_writes_data_and_sidecar_and_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "syn.json"
    result = build_synthetic_arithmetic(SyntheticOptions(n=20), out)
    data, sidecar = output_paths(out)
    assert result.paths == (data, sidecar) and json.loads(data.read_text()) == result.records
    provenance = json.loads(sidecar.read_text())
    assert provenance["output"]["sha256"] == sha256_file(data) and provenance["arguments"]["n"] == 20
    assert {"builder", "seed", "sources", "provenance"} <= set(provenance)
    assert {"versions", "git_commit", "machine", "created"} <= set(provenance["provenance"])
    assert sorted(p.name for p in data.parent.iterdir()) == ["syn.json", "syn.provenance.json"]  # no temp files
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_synthetic_arithmetic(SyntheticOptions(n=20), out)
    build_synthetic_arithmetic(SyntheticOptions(n=10), out, overwrite=True)
    assert len(json.loads(data.read_text())) == 10


def test_builder_names_the_bad_raw_record_by_file_index_and_field(tmp_path: Path) -> None:
    path = tmp_path / "dataset" / "mawps" / "trainset.json"
    path.parent.mkdir(parents=True)
    rows = [{"original_text": "a", "equation": "x=1+1", "ans": 2}, {"original_text": "b", "ans": 3}]
    path.write_text(json.dumps(rows))
    message = f"{path}, record 1, field 'equation': missing (the record has 'original_text', 'ans')"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_math(MathOptions(sources=("mawps",), data_dir=str(tmp_path)))


def test_data_folder_is_the_layout_folder_or_its_parent_and_defaults_to_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "llm-adapters" / "dataset").mkdir(parents=True)
    assert resolve_layout_dir(tmp_path) == resolve_layout_dir(tmp_path / "llm-adapters") == tmp_path / "llm-adapters"
    monkeypatch.setenv(ENV_DATA, str(tmp_path))
    assert resolve_layout_dir() == tmp_path / "llm-adapters"
    message = f"{tmp_path / 'extra'} has no dataset/ folder (expected dataset/<name>/test.json, LLM-Adapters layout); "
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(message)}pass --data-dir or set \\$LLM_ADAPTERS_DATA$"):
        resolve_layout_dir(tmp_path / "extra")


def test_cli_build_synthetic_and_overwrite_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "syn")
    assert main(["data", "build", "synthetic-arithmetic", "--out", out, "--n", "5", "--steps", "1"]) == 0
    assert "5 records" in capsys.readouterr().out
    assert main(["data", "build", "synthetic-arithmetic", "--out", out, "--n", "5"]) == 2
    assert "--overwrite" in capsys.readouterr().err


@needs_data
def test_cli_build_commonsense_flags_reach_the_builder(tmp_path: Path) -> None:
    out = tmp_path / "cs"
    argv = ["data", "build", "commonsense", "--out", str(out), "--tasks", "boolq,obqa", "--max-per-task", "7"]
    assert main(argv + ["--no-shuffle", "--keep-overlap", "--overlap-mode", "ws"]) == 0
    provenance = json.loads(output_paths(out)[1].read_text())
    assert provenance["arguments"]["shuffle"] is False and provenance["overlap"] == {
        "mode": "ws", "excluded": False, "not_checked": ["hellaswag"]
    }
    assert provenance["records"] == 14
