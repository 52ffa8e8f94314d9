"""A study folder as the Study tab shows it, read from files only: the report's `table.csv`, `comparisons.csv` and
PNG plots (written by `llm-adapters study report` into DIR/report), and from the study store each run's
per-question outcomes (`runs/*/result.json`) and generations (`runs/*/eval/<task>/predictions.jsonl`).

Plain data, no Gradio: the app renders what these functions return.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def report_folder(study: str | Path) -> Path | None:
    """DIR/report (where `study report` writes), or DIR itself when it holds a table.csv (a committed report)."""
    study = Path(study)
    for candidate in (study / "report", study):
        if (candidate / "table.csv").is_file():
            return candidate
    return None


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV file; ([], []) when it is not there."""
    if not path.is_file():
        return [], []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


def shown(value: str) -> str:
    """A CSV cell for reading: numbers to 4 significant digits, the rest as written."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.4g}"


def table(study: str | Path) -> tuple[list[str], list[list[str]]]:
    """The report's table.csv (configuration x column: mean, sd, interval, seeds, questions, % trainable)."""
    folder = report_folder(study)
    header, rows = read_csv(folder / "table.csv") if folder else ([], [])
    return header, [[shown(cell) for cell in row] for row in rows]


def comparisons(study: str | Path) -> tuple[list[str], list[list[str]]]:
    """The report's comparisons.csv (paired differences, p-values, Holm, verdicts)."""
    folder = report_folder(study)
    header, rows = read_csv(folder / "comparisons.csv") if folder else ([], [])
    return header, [[shown(cell) for cell in row] for row in rows]


def plots(study: str | Path) -> list[Path]:
    """The report's PNG plots."""
    folder = report_folder(study)
    return sorted(folder.glob("*.png")) if folder else []


def results(study: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """(run folder, result.json) of every finished run of the study store."""
    found = []
    for path in sorted((Path(study) / "runs").glob("*/result.json")):
        try:
            found.append((path.parent, json.loads(path.read_text(encoding="utf-8"))))
        except ValueError:
            continue
    return found


def configuration(result: dict[str, Any]) -> str:
    """A run's configuration as the report labels its rows (`study.spec.configuration_key`: the grid values but the
    seed, with their axis names; the baseline run is the base model)."""
    from llm_adapters.study.spec import BASELINE, configuration_key

    return BASELINE if result.get("baseline") else configuration_key(result.get("values", {}))


def configurations(study: str | Path) -> dict[str, dict[Any, Path]]:
    """Configuration -> {seed: run folder}."""
    grouped: dict[str, dict[Any, Path]] = {}
    for folder, result in results(study):
        grouped.setdefault(configuration(result), {})[result.get("seed")] = folder
    return grouped


def tasks(study: str | Path) -> list[str]:
    return sorted({task for _, result in results(study) for task in result.get("tasks", {})})


def _predictions(run: Path, task: str) -> list[dict[str, Any]]:
    path = run / "eval" / task / "predictions.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _paired_seeds(a: dict[Any, Path], b: dict[Any, Path]) -> list[tuple[Any, Any]]:
    """The (seed of a, seed of b) pairs to compare: the seeds both have; a configuration run once without a seed
    (the base model) pairs with every seed of the other."""
    if list(a) == [None]:
        return [(None, seed) for seed in b]
    if list(b) == [None]:
        return [(seed, None) for seed in a]
    return [(seed, seed) for seed in a if seed in b]


def disagreements(study: str | Path, a: str, b: str, task: str) -> list[dict[str, Any]]:
    """The questions of `task` that configurations `a` and `b` answered differently (one right, one wrong), seed
    by seed (`_paired_seeds`; a question is a question: seeds are the same questions again): question index,
    seed, gold, each one's extracted answer, whether right, and generation."""
    groups = configurations(study)
    rows = []
    for seed_a, seed_b in _paired_seeds(groups.get(a, {}), groups.get(b, {})):
        left, right = _predictions(groups[a][seed_a], task), _predictions(groups[b][seed_b], task)
        outcome = {"a": {r["index"]: r for r in left}, "b": {r["index"]: r for r in right}}
        for index in sorted(set(outcome["a"]) & set(outcome["b"])):
            x, y = outcome["a"][index], outcome["b"][index]
            if _right(x) != _right(y):
                rows.append({"index": index, "seed": seed_a if seed_a is not None else seed_b, "gold": x.get("gold"),
                             "question": _question(x["prompt"]), "a_answer": _answer(x), "a_correct": _right(x),
                             "a_generation": x.get("generation", ""), "b_answer": _answer(y), "b_correct": _right(y),
                             "b_generation": y.get("generation", "")})
    return rows


def _right(record: dict[str, Any]) -> bool:
    """Whether a prediction record is right: its generation's answer, else (scored by log-likelihood only) its
    most likely label."""
    return bool(record["correct"] if "correct" in record else record.get("loglik_correct"))


def _answer(record: dict[str, Any]) -> Any:
    return record["prediction"] if "prediction" in record else record.get("loglik_prediction")


def _question(prompt: str) -> str:
    """The instruction inside a templated prompt (between "### Instruction:" and the next "###"), else the
    prompt."""
    start = prompt.find("### Instruction:")
    if start < 0:
        return prompt.strip()
    body = prompt[start + len("### Instruction:"):]
    end = body.find("###")
    return " ".join((body if end < 0 else body[:end]).split())
