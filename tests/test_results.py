"""The committed study results recompute from their own records: every task cell of `table.csv` and every
comparison of `comparisons.csv` (difference, SE, p, Holm p, the counts) from the per-question outcomes in
`records.json`, with the by-hand formulas of test_study_statistics; and both files, byte for byte, with the report's
own functions on `records.json` and the committed spec's hypotheses; and the evidence study's README tables are
those numbers."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from llm_adapters.study import report
from llm_adapters.study.records import from_json
from test_study_statistics import T975, expected_cell, expected_difference, mean, sample_var

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
FOLDERS = sorted(p for p in RESULTS.iterdir() if (p / "records.json").is_file()) if RESULTS.is_dir() else []


def _outcomes(folder: Path) -> dict[str, dict[str, list[list[int]]]]:
    """configuration -> task -> per seed (in seed order) the 0/1 outcomes in question order."""
    by_config: dict[str, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for record in json.loads((folder / "records.json").read_text()):
        questions = sorted(record["outcomes"], key=int)
        by_config[record["configuration"]][record["task"]][record["seed"] or 0] = [
            int(record["outcomes"][q]) for q in questions]
    return {c: {t: [seeds[s] for s in sorted(seeds)] for t, seeds in tasks.items()} for c, tasks in by_config.items()}


def _holm(ps: list[float]) -> list[float]:
    order = sorted(range(len(ps)), key=ps.__getitem__)
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def expected_average(by_task: dict[str, list[list[int]]]) -> tuple[float, float, float]:
    """Definition 2 by hand: the mean over tasks of each seed's accuracy, the question noise of every task
    (binomial, at the task's mean over seeds) and Student's t over the seeds' averages."""
    tasks, k = list(by_task), len(next(iter(by_task.values())))
    per_seed = [mean([mean(by_task[t][s]) for t in tasks]) for s in range(k)]
    m = mean(per_seed)
    p = {t: mean([mean(seed) for seed in by_task[t]]) for t in tasks}
    h_q = 1.959964 * math.sqrt(sum(p[t] * (1 - p[t]) / len(by_task[t][0]) for t in tasks)) / len(tasks)
    h_s = T975[k - 1] * math.sqrt(sample_var(per_seed) / k) if k > 1 else 0.0
    return m, max(0.0, m - math.hypot(h_q, h_s)), min(1.0, m + math.hypot(h_q, h_s))


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_cell_and_average_recomputes_from_the_records(folder: Path) -> None:
    outcomes = _outcomes(folder)
    rows = list(csv.DictReader((folder / "table.csv").open()))
    assert {r["column"] for r in rows} > {"average"}
    for row in rows:
        by_task = outcomes[row["configuration"]]
        m, low, high = expected_average(by_task) if row["column"] == "average" else expected_cell(
            by_task[row["column"]])
        assert (float(row["mean"]), float(row["ci95_low"]), float(row["ci95_high"])) == pytest.approx(
            (m, low, high), abs=2e-5), (row["configuration"], row["column"])  # t to 5 digits: 4e-6 at sd 14 points


def _confirmatory_column(scope: str) -> str | None:
    """The column of a pre-registered hypothesis's row ("confirmatory H1 (average)"), None for the others."""
    found = re.fullmatch(r"(?:.*: )?confirmatory \S+ \((.+)\)", scope)
    return found.group(1) if found else None


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_comparison_recomputes_from_the_records_with_holm_over_its_family(folder: Path) -> None:
    # Two families: the pre-registered hypotheses (an untested one counts with p = 1), and every other comparison.
    outcomes = _outcomes(folder)
    rows = list(csv.DictReader((folder / "comparisons.csv").open()))
    families: dict[bool, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for row in rows:
        column = _confirmatory_column(row["scope"])
        if row["p"] == "":
            assert column is not None and row["n_questions"] == "0", row  # only a hypothesis may go untested
            families[True].append((row, 1.0))
            continue
        a, b = outcomes[row["a"]], outcomes[row["b"]]
        if column not in (None, "average"):
            a, b = {column: a[column]}, {column: b[column]}
        expected = expected_difference(a, b)
        assert float(row["difference"]) == pytest.approx(expected["difference"], abs=1e-9)
        assert float(row["se"]) == pytest.approx(expected["se"], rel=1e-6)
        assert float(row["p"]) == pytest.approx(expected["p"], abs=1e-6)
        assert (int(row["a_better"]), int(row["b_better"])) == (expected["a_better"], expected["b_better"])
        families[column is not None].append((row, float(row["p"])))
    for family in families.values():
        for (row, _), adjusted in zip(family, _holm([p for _, p in family])):
            if row["p"] != "":
                assert float(row["p_holm"]) == pytest.approx(adjusted, abs=1e-6), row["scope"]


def _cells(text: str) -> tuple[list[str], list[float]]:
    """A CSV's text cells and, apart, its numbers (whose last digit may differ with another libm or SciPy)."""
    words, numbers = [], []
    for line in csv.reader(io.StringIO(text)):
        for cell in line:
            try:
                numbers.append(float(cell))
                words.append("#")
            except ValueError:
                words.append(cell)
        words.append("\n")
    return words, numbers


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_the_report_functions_rewrite_table_and_comparisons_from_the_committed_folder_alone(folder: Path) -> None:
    # The hypotheses come from the spec the study ran with, saved beside its records (specs.json).
    records = from_json((folder / "records.json").read_text())
    specs = json.loads((folder / "specs.json").read_text(encoding="utf-8"))
    hypotheses = {name: spec["hypotheses"] for name, spec in specs.items() if spec.get("hypotheses")}
    summary = report.table(records)
    found = report.comparisons(records, summary, hypotheses)
    for written, committed in ((report.table_csv(summary), "table.csv"), (report.comparisons_csv(found),
                                                                         "comparisons.csv")):
        words, numbers = _cells((folder / committed).read_text())
        assert _cells(written)[0] == words
        assert _cells(written)[1] == pytest.approx(numbers, rel=1e-12, abs=1e-15)
    confirmatory = [r for r in csv.DictReader((folder / "comparisons.csv").open()) if _confirmatory_column(r["scope"])]
    assert len(confirmatory) == sum(len(h) for h in hypotheses.values())
    # report.md: its tables and sentences are what the report's functions write from the same records
    registered = [c for c in found if c.get("hypothesis")]
    expected = report._markdown_table(*report.table_view(summary)) + report._markdown_table(
        *report.comparison_view(found)) + [f"- {c['scope']}: {report.sentence(c)}" for c in found]
    if registered:
        expected += report._markdown_table(*report.hypotheses_view(registered))
    written = (folder / "report.md").read_text().splitlines()
    assert [line for line in expected if line not in written] == []


def test_the_evidence_study_ran_with_the_hypotheses_it_registered() -> None:
    # The pre-registration (configs/studies/evidence-commonsense.yaml, committed before the run) and the spec the
    # study saved when it ran hold the same hypotheses.
    folder = RESULTS / "evidence-commonsense"
    if not (folder / "specs.json").is_file():
        pytest.skip("the evidence-commonsense result is not committed yet")
    registered = yaml.safe_load((ROOT / "configs" / "studies" / "evidence-commonsense.yaml").read_text())
    ran = json.loads((folder / "specs.json").read_text(encoding="utf-8"))["evidence-commonsense"]
    assert ran["hypotheses"] == registered["hypotheses"]


def _configuration(label: str, configurations: list[str]) -> str:
    """The one configuration a README label names: "base model", "Prefix", "LoRA attn+mlp, lr 3e-4" or
    "LoRA (lr 1e-3)" (method, optional placement, optional learning rate)."""
    if label in ("base model", "the base model"):
        return "base model"
    method, placement, lr = re.fullmatch(r"(\w+)(?: ([\w+]+))?(?:,? \(?lr ([\de.-]+)\)?)?", label).groups()
    key = {f"method={method.lower()}"} | ({f"placement={placement}"} if placement else set()) | \
        ({f"learning_rate={float(lr)!r}"} if lr else set())
    (found,) = [c for c in configurations if key <= set(c.split(","))]
    return found


def test_the_evidence_readme_tables_are_the_committed_numbers() -> None:
    # The result's README types its two tables by hand: each label must name the CSVs' configuration and each
    # number be the CSVs', rounded as printed; every configuration and hypothesis appears once.
    folder = RESULTS / "evidence-commonsense"
    if not (folder / "README.md").is_file():
        pytest.skip("the evidence-commonsense result is not committed yet")
    text = (folder / "README.md").read_text()
    averages = {r["configuration"]: r for r in csv.DictReader((folder / "table.csv").open())
                if r["column"] == "average"}
    rows = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \[([\d.]+)-([\d.]+)\] \| (\S+) \|$", text, re.MULTILINE)
    named = [_configuration(label, list(averages)) for label, *_ in rows]
    assert sorted(named) == sorted(averages) and len(averages) == 8
    for configuration, (_, m, low, high, sd) in zip(named, rows):
        row = averages[configuration]
        assert (m, low, high) == tuple(f"{100 * float(row[k]):.1f}" for k in ("mean", "ci95_low", "ci95_high"))
        assert sd == (f"{100 * float(row['sd']):.1f}" if row["sd"] else "–")
    hypotheses = {re.search(r"H\d", r["scope"]).group(): r for r in csv.DictReader((folder / "comparisons.csv").open())
                  if r["scope"].startswith("confirmatory")}
    rows = re.findall(r"^\| (H\d) \| ([^|]+) > ([^|]+) \| ([+-][\d.]+) \| \[([+-][\d.]+), ([+-][\d.]+)\] \| ([\d.]+) "
                      r"\| ([\d.]+) \| ([a-z ]+) \|$", text, re.MULTILINE)
    assert sorted(name for name, *_ in rows) == sorted(hypotheses) == ["H1", "H2", "H3", "H4", "H5"]
    configurations = [*averages]
    for name, a, b, d, low, high, p, p_holm, outcome in rows:
        r = hypotheses[name]
        assert (_configuration(a, configurations), _configuration(b, configurations)) == (r["a"], r["b"])
        diff, se = 100 * float(r["difference"]), 100 * float(r["se"])
        assert (d, low, high) == tuple(f"{x:+.1f}" for x in (diff, diff - 1.959964 * se, diff + 1.959964 * se))
        assert (p, p_holm) == (f"{float(r['p']):.2f}", f"{float(r['p_holm']):.2f}")
        decided = float(r["p_holm"]) < 0.05
        assert outcome == ("not decided" if not decided else "held" if diff > 0 else "contradicted")
