"""`study report`: tables, paired comparisons and plots from the store alone (one or several study folders).

Rows are configurations (a run's grid values without the seed; with several folders, also the study), columns
the tasks, their average and the trainable-parameter %. A cell is the mean over seeds ± the standard deviation
(n - 1), with a 95 % interval that covers both noises: the wider of Student's t over the seeds and the Wilson
interval of all the configuration's answers pooled. Comparisons pair the same questions and seeds (McNemar's exact test) and say plainly when a
difference is inside the noise.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from llm_adapters.errors import MissingInputError
from llm_adapters.eval.score import wilson_interval
from llm_adapters.files import write_text_atomic
from llm_adapters.study import store

# Student's t, 0.975 quantile, for 1..30 degrees of freedom (a table: no SciPy for thirty numbers); above: normal.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
ALPHA = 0.05


def t975(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.959963984540054


def seed_statistics(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and the t-interval of the mean over seeds (None where n = 1)."""
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return {"mean": mean, "sd": None, "ci95": None, "n": n}
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    # An accuracy lies in [0, 1]: the interval is cut there (with few seeds it is wide).
    return {"mean": mean, "sd": sd, "ci95": [max(0.0, mean - half), min(1.0, mean + half)], "n": n}


def mcnemar(a: list[bool], b: list[bool]) -> dict[str, Any]:
    """McNemar's exact test on paired outcomes: b01 = A right and B wrong, b10 = A wrong and B right;
    p = two-sided binomial probability of a split at least this uneven, under p = 1/2."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths ({len(a)} and {len(b)})")
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    discordant = a_only + b_only
    if discordant == 0:
        return {"a_only": 0, "b_only": 0, "p": 1.0, "pairs": len(a)}
    tail = math.fsum(math.comb(discordant, k) for k in range(min(a_only, b_only) + 1)) / 2 ** discordant
    return {"a_only": a_only, "b_only": b_only, "p": min(1.0, 2 * tail), "pairs": len(a)}


# ------------------------------------------------------------------------------------------------ records

def load(folders: list[str | Path]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(run results, failures, {study name: its saved spec}) of every folder."""
    results, failed, specs = [], [], {}
    for folder in folders:
        path = Path(folder) / store.STUDY_FILE
        if not path.is_file():
            raise MissingInputError(f"{folder} is not a study folder (no {store.STUDY_FILE})")
        spec = json.loads(path.read_text(encoding="utf-8"))["spec"]
        specs[spec["name"]] = spec
        grid = spec.get("grid") or []
        order: dict[str, dict[str, int]] = {}
        for product in grid if isinstance(grid, list) else [grid]:
            for axis, values in product.items():
                for value in values:
                    order.setdefault(axis, {}).setdefault(json.dumps(value), len(order.get(axis, {})))
        results += [dict(r, _order=order) for r in store.results(folder)]
        failed += [dict(f, study=spec["name"]) for f in store.failures(folder)]
    return results, failed, specs


def records(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run x task: what `study report --json` prints."""
    return [{"run_id": r["id"], "name": r["name"], "study": r["study"], "task": task, "accuracy": t["accuracy"],
             "n": t["n"], "correct": t["correct"], **r["values"], "method": r["method"], "placement": r["placement"],
             "seed": r["seed"], "percent": r["parameters"]["percent"]}
            for r in results for task, t in r["tasks"].items()]


def _config_key(result: dict[str, Any], several: bool) -> str:
    label = "-".join(str(v) for k, v in result["values"].items() if k != "seed") or result["method"]
    return f"{result['study']}: {label}" if several else label


def _grid_order(result: dict[str, Any]) -> tuple:
    """Where a run's values stand in its grid's lists (set by `load`), so rows follow the spec's order."""
    order = result.get("_order", {})
    return tuple(order.get(axis, {}).get(json.dumps(value), len(order)) for axis, value in result["values"].items())


def configurations(results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by configuration (grid values but the seed), in the spec's grid order."""
    several = len({r["study"] for r in results}) > 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for result in sorted(results, key=lambda r: (r["study"], _grid_order(r), r["name"])):
        groups.setdefault(_config_key(result, several), []).append(result)
    return groups


def _with_answer_noise(stat: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
    """The interval that covers both noises: the seeds' spread (Student's t) and the finite number of
    questions (the Wilson interval of all the answers pooled). Two seeds that agree are no proof of a precise
    number: 30 questions still are 30 questions."""
    low, high = wilson_interval(sum(a["correct"] for a in answers), sum(a["n"] for a in answers))
    seeds = stat["ci95"] or [low, high]
    return {**stat, "ci95": [min(seeds[0], low), max(seeds[1], high)], "ci95_seeds": stat["ci95"],
            "ci95_answers": [low, high]}


def table(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per configuration and task (and the average over tasks): the statistics over seeds."""
    groups = configurations(results)
    tasks = list(dict.fromkeys(t for r in results for t in r["tasks"]))
    rows = {}
    for key, runs in groups.items():
        cells = {}
        for task in tasks:
            values = [r["tasks"][task]["accuracy"] for r in runs if task in r["tasks"]]
            if values:
                answers = [r["tasks"][task] for r in runs if task in r["tasks"]]
                cells[task] = _with_answer_noise(seed_statistics(values), answers)
        averages = [math.fsum(r["tasks"][t]["accuracy"] for t in tasks if t in r["tasks"])
                    / max(1, sum(t in r["tasks"] for t in tasks)) for r in runs]
        cells["average"] = _with_answer_noise(seed_statistics(averages),
                                              [r["tasks"][t] for r in runs for t in tasks if t in r["tasks"]])
        rows[key] = {"cells": cells, "percent": runs[0]["parameters"]["percent"], "method": runs[0]["method"],
                     "seeds": sorted(r["seed"] for r in runs), "values": {k: v for k, v in runs[0]["values"].items()
                                                                          if k != "seed"}}
    return {"tasks": tasks, "rows": rows}


def compare(results: list[dict[str, Any]], a: str, b: str) -> dict[str, Any]:
    """McNemar over the questions both configurations answered with the same seed, every task pooled."""
    groups = configurations(results)
    by_seed = {key: {r["seed"]: r for r in groups[key]} for key in (a, b)}
    outcomes_a, outcomes_b = [], []
    for seed in sorted(set(by_seed[a]) & set(by_seed[b])):
        ra, rb = by_seed[a][seed], by_seed[b][seed]
        for task in sorted(set(ra["tasks"]) & set(rb["tasks"])):
            n = min(len(ra["tasks"][task]["outcomes"]), len(rb["tasks"][task]["outcomes"]))
            outcomes_a += ra["tasks"][task]["outcomes"][:n]
            outcomes_b += rb["tasks"][task]["outcomes"][:n]
    test = mcnemar(outcomes_a, outcomes_b)
    difference = 100 * (sum(outcomes_a) - sum(outcomes_b)) / max(1, len(outcomes_a))
    return {"a": a, "b": b, "difference_points": difference, **test}


def comparisons(results: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Within each method, its best configuration against each other one; then the methods' best against each
    other (best = highest mean average accuracy)."""
    rows = summary["rows"]
    best: dict[str, str] = {}
    for key, row in rows.items():
        if row["method"] not in best or row["cells"]["average"]["mean"] > rows[best[row["method"]]]["cells"][
                "average"]["mean"]:
            best[row["method"]] = key
    found = []
    for method, top in best.items():
        found += [dict(compare(results, top, key), scope=f"within {method}") for key, row in rows.items()
                  if row["method"] == method and key != top]
    tops = list(best.values())
    found += [dict(compare(results, x, y), scope="between methods") for i, x in enumerate(tops) for y in tops[i + 1:]]
    return found


def sentence(c: dict[str, Any]) -> str:
    pairs = f"{c['pairs']} paired answers, {c['a_only']} right only for the first, {c['b_only']} only for the second"
    if c["p"] >= ALPHA:
        return (f"{c['a']} vs {c['b']}: {c['difference_points']:+.1f} points, inside the noise (McNemar p = "
                f"{c['p']:.2f}; {pairs})")
    better, worse = (c["a"], c["b"]) if c["difference_points"] > 0 else (c["b"], c["a"])
    return (f"{better} beats {worse} by {abs(c['difference_points']):.1f} points (McNemar p = {c['p']:.3f}; "
            f"{pairs})")


# ------------------------------------------------------------------------------------------------ writing

def _cell(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return "–"
    mean = 100 * stat["mean"]
    interval = f" [{100 * stat['ci95'][0]:.0f}–{100 * stat['ci95'][1]:.0f}]" if stat["ci95"] else ""
    return f"{mean:.1f} ± {100 * stat['sd']:.1f}{interval}" if stat["sd"] is not None else f"{mean:.1f}{interval}"


def markdown(summary: dict[str, Any], found: list[dict[str, Any]], failed: list[dict[str, Any]]) -> str:
    tasks = summary["tasks"]
    lines = ["| configuration | seeds | " + " | ".join(tasks) + " | average | #params % |",
             "|---|---|" + "---:|" * (len(tasks) + 2)]
    for key, row in summary["rows"].items():
        cells = [_cell(row["cells"].get(t)) for t in tasks]
        lines.append(f"| {key} | {','.join(map(str, row['seeds']))} | " + " | ".join(cells)
                     + f" | {_cell(row['cells']['average'])} | {row['percent']:.3f} |")
    lines += ["", "Accuracy %: mean over seeds ± standard deviation [95 % interval: the wider of Student's t over the "
                  "seeds and the Wilson interval of all the answers pooled]. Average: the unweighted mean over tasks, "
                  "per seed.",
              "", "## Comparisons (McNemar's exact test on the same questions and seeds; no correction for the "
                  "number of comparisons)", ""]
    lines += [f"- {c['scope']}: {sentence(c)}" for c in found] or ["- (one configuration: nothing to compare)"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {f['name']} ({f['id']}): {f['error']}" for f in failed]
    return "\n".join(lines) + "\n"


def csv_text(summary: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["configuration", "column", "mean", "sd", "ci95_low", "ci95_high", "seeds_t_low", "seeds_t_high",
                     "answers_wilson_low", "answers_wilson_high", "n_seeds", "percent"])
    for key, row in summary["rows"].items():
        for column, stat in row["cells"].items():
            seeds = stat["ci95_seeds"] or (None, None)
            writer.writerow([key, column, stat["mean"], stat["sd"], *stat["ci95"], *seeds, *stat["ci95_answers"],
                             stat["n"], row["percent"]])
    return buffer.getvalue()


def write_report(folders: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Write report.md, table.csv and the plots into `out` (default: the first folder's report/)."""
    from llm_adapters.plots import study_figures

    results, failed, specs = load(folders)
    out = Path(out) if out else Path(folders[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not results:
        text = "No finished run yet.\n" + "".join(f"- failed: {f['name']}: {f['error']}\n" for f in failed)
        write_text_atomic(out / "report.md", text)
        return {"markdown": text, "folder": str(out), "plots": []}
    summary = table(results)
    found = comparisons(results, summary)
    title = " + ".join(specs)
    text = f"# {title}\n\n{len(results)} run(s) finished, {len(failed)} failed.\n\n" + markdown(summary, found, failed)
    in_distribution = [t for spec in specs.values() for t in spec.get("in_distribution", [])]
    pictures = study_figures(summary, out, in_distribution)
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in pictures)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "table.csv", csv_text(summary))
    return {"markdown": text, "folder": str(out), "plots": [str(p) for p in pictures], "table": summary,
            "comparisons": found}
