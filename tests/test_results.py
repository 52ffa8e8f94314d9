"""The committed study results recompute from their own records: every task cell of `table.csv` and every
comparison of `comparisons.csv` (difference, SE, p, Holm p, the counts) from the per-question outcomes in
`records.json`, with the by-hand formulas of test_study_statistics; and both files, byte for byte, with the report's
own functions on `records.json` and the committed spec's hypotheses."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from llm_adapters.study import report
from llm_adapters.study.records import from_json
from test_study_statistics import expected_cell, expected_difference

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


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_task_cell_recomputes_from_the_records(folder: Path) -> None:
    outcomes = _outcomes(folder)
    rows = [r for r in csv.DictReader((folder / "table.csv").open()) if r["column"] != "average"]
    assert rows
    for row in rows:
        m, low, high = expected_cell(outcomes[row["configuration"]][row["column"]])
        assert (float(row["mean"]), float(row["ci95_low"]), float(row["ci95_high"])) == pytest.approx(
            (m, low, high), rel=1e-6), (row["configuration"], row["column"])  # z to 7 digits here


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_comparison_recomputes_from_the_records_with_holm_over_its_family(folder: Path) -> None:
    outcomes = _outcomes(folder)
    rows = list(csv.DictReader((folder / "comparisons.csv").open()))
    families: dict[bool, list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        a, b = outcomes[row["a"]], outcomes[row["b"]]
        expected = expected_difference(a, b)  # on the average over the tasks, as these studies compare
        assert float(row["difference"]) == pytest.approx(expected["difference"], abs=1e-9)
        assert float(row["se"]) == pytest.approx(expected["se"], rel=1e-6)
        assert float(row["p"]) == pytest.approx(expected["p"], abs=1e-6)
        assert (int(row["a_better"]), int(row["b_better"])) == (expected["a_better"], expected["b_better"])
        families["hypothesis" in row["scope"]].append(row)
    for family in families.values():
        for row, adjusted in zip(family, _holm([float(r["p"]) for r in family])):
            assert float(row["p_holm"]) == pytest.approx(adjusted, abs=1e-6)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_the_report_functions_rewrite_table_and_comparisons_from_the_records_alone(folder: Path) -> None:
    records = from_json((folder / "records.json").read_text())
    hypotheses = {}
    for study in dict.fromkeys(r["study"] for r in records):
        spec = yaml.safe_load((ROOT / "configs" / "studies" / f"{study}.yaml").read_text())
        if spec.get("hypotheses"):
            hypotheses[study] = spec["hypotheses"]
    summary = report.table(records)
    found = report.comparisons(records, summary, hypotheses)
    assert report.table_csv(summary) == (folder / "table.csv").read_text()
    assert report.comparisons_csv(found) == (folder / "comparisons.csv").read_text()
    assert sum(1 for c in found if c.get("hypothesis")) == sum(len(h) for h in hypotheses.values())
