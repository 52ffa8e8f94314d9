"""What a study report reads from the store: one record per run x task with each question's outcome
(`load_study_records`, what `study report --json` prints and `records.json` holds), and each question's prompt,
gold answer and generations (`load_generations`, for the HTML report's disagreement browser).

A record:
    {"run_id", "name", "study", "configuration" (spec.configuration_key, or "base model"; prefixed by the study's
     name when several studies are read), "baseline" (bool), "method", "placement", "seed", "values" (the grid
     values), "percent" (trainable %), "task", "n", "correct", "accuracy",
     "outcomes": {question index: correct}}

Every number of a report is computed from the records alone (`report.table`, `report.comparisons` take them).
Records come in the report's row order: per study, the baseline first, then the spec's grid order, then seeds.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_adapters.errors import MissingInputError
from llm_adapters.study import store
from llm_adapters.study.spec import BASELINE, configuration_key


@dataclass(frozen=True)
class StoreContents:
    """What `read_store` found: records, failed runs, each study's saved spec, and each run's folder."""

    records: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    specs: dict[str, dict[str, Any]]
    folders: dict[str, Path]  # run id -> its run folder


def load_study_records(folders: str | Path | list[str | Path]) -> list[dict[str, Any]]:
    """One record per finished run x task of one or several study folders, with per-question outcomes (the module
    docstring has the fields).

    Raises:
        MissingInputError: a folder that is not a study folder.

    Example:
        >>> records = load_study_records("runs/studies/rq1")  # doctest: +SKIP
        >>> records[0]["configuration"], records[0]["outcomes"][0]  # doctest: +SKIP
        ('base model', False)
    """
    return read_store([folders] if isinstance(folders, (str, Path)) else folders).records


def read_store(folders: list[str | Path]) -> StoreContents:
    """Records, failures, specs and run folders of every study folder."""
    found: list[tuple[tuple, dict[str, Any], Path]] = []
    failed, specs = [], {}
    saved = []
    for folder in folders:
        path = Path(folder) / store.STUDY_FILE
        if not path.is_file():
            raise MissingInputError(f"{folder} is not a study folder (no {store.STUDY_FILE})")
        saved.append(json.loads(path.read_text(encoding="utf-8")))
    # Folders of one study (its shards) pool their runs; folders whose specs share a name but not their fixed part
    # (another base model, other data or settings) are different studies, named after their folders.
    fixed_by_name: dict[str, set[str]] = {}
    for study in saved:
        fixed_by_name.setdefault(study["spec"]["name"], set()).add(json.dumps(study.get("fixed"), sort_keys=True))
    for number, (folder, study) in enumerate(zip(folders, saved)):
        spec = dict(study["spec"])
        if len(fixed_by_name[spec["name"]]) > 1:
            spec["name"] = f"{spec['name']} ({Path(folder).name})"
        specs[spec["name"]] = spec
        grid = spec.get("grid") or []
        for result_path in store.result_paths(folder):
            result = json.loads(result_path.read_text(encoding="utf-8"))
            result["study"] = spec["name"]
            rank = (number, not result.get("baseline", False), _grid_rank(grid, result["values"]),
                    str(result["values"]), result["seed"] if result["seed"] is not None else -1, result["name"])
            found.append((rank, result, result_path.parent))
        failed += [dict(f, study=spec["name"]) for f in store.failures(folder)]
    several = len({result["study"] for _, result, _ in found}) > 1
    records = []
    for _, result, _ in sorted(found, key=lambda item: item[0]):
        key = BASELINE if result.get("baseline") else configuration_key(result["values"])
        for task, t in result["tasks"].items():
            records.append({
                "run_id": result["id"], "name": result["name"], "study": result["study"],
                "configuration": f"{result['study']}: {key}" if several else key,
                "baseline": bool(result.get("baseline", False)), "method": result["method"],
                "placement": result["placement"], "seed": result["seed"], "values": result["values"],
                "percent": result["parameters"]["percent"], "task": task, "n": t["n"], "correct": t["correct"],
                "accuracy": t["accuracy"], "outcomes": dict(enumerate(t["outcomes"]))})
    return StoreContents(records, failed, specs, {result["id"]: folder for _, result, folder in found})


def _grid_rank(grid: list | dict, values: dict[str, Any]) -> tuple:
    """Where a run's values stand in the spec's grid: the first product with its axes, then each value's place in
    its axis's list (the seed aside), so rows follow the spec's order; runs the grid no longer holds come last."""
    products = grid if isinstance(grid, list) else [grid]
    for number, product in enumerate(products):
        if set(product) == set(values):
            places = [[json.dumps(v) for v in product[axis]] for axis in product if axis != "seed"]
            wanted = [json.dumps(values[axis]) for axis in product if axis != "seed"]
            if all(w in p for w, p in zip(wanted, places)):
                return number, tuple(p.index(w) for w, p in zip(wanted, places))
    return len(products), ()


def from_json(text: str) -> list[dict[str, Any]]:
    """Records read back from `records.json` (JSON makes the question indices strings: they become ints)."""
    return [{**r, "outcomes": {int(q): bool(v) for q, v in r["outcomes"].items()}} for r in json.loads(text)]


def load_generations(run_folder: str | Path, task: str) -> dict[int, dict[str, Any]]:
    """Each question's record in a run's evaluation (`eval/<task>/predictions.jsonl`), by question index:
    prompt, gold, generation (absent where the task is scored by log-likelihood only), prediction, correct."""
    path = Path(run_folder) / "eval" / task / "predictions.jsonl"
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            found.setdefault(int(record["index"]), record)
    return found


def answers(contents: StoreContents) -> dict[str, Any]:
    """The HTML report's disagreement browser data: {"configurations": {configuration: [{"run", "name", "seed"}]},
    "questions": {task: {question index: {"prompt", "gold"}}}, "answers": {run id: {task: {question index:
    [correct (0 or 1), prediction, generation]}}}}; a run folder without its predictions gives no texts."""
    configurations: dict[str, dict[str, dict[str, Any]]] = {}
    questions: dict[str, dict[int, dict[str, Any]]] = {}
    found: dict[str, dict[str, dict[int, list[Any]]]] = {}
    for record in contents.records:
        run = record["run_id"]
        configurations.setdefault(record["configuration"], {})[run] = {"run": run, "name": record["name"],
                                                                      "seed": record["seed"]}
        try:
            predictions = load_generations(contents.folders[run], record["task"])
        except FileNotFoundError:
            predictions = {}
        asked = questions.setdefault(record["task"], {})
        given = found.setdefault(run, {}).setdefault(record["task"], {})
        for question, correct in record["outcomes"].items():
            prediction = predictions.get(question, {})
            if question not in asked or not asked[question]["prompt"]:
                asked[question] = {"prompt": prediction.get("prompt", ""), "gold": prediction.get("gold")}
            given[question] = [int(correct), prediction.get("prediction", prediction.get("loglik_prediction")),
                               prediction.get("generation")]
    return {"configurations": {key: list(runs.values()) for key, runs in configurations.items()},
            "questions": questions, "answers": found}
