"""`study report`: tables, paired comparisons, plots and one HTML page from the store alone (one or several study
folders), every number computed from the per-question records (`records.py`) by `statistics.py`.

Rows are configurations: a run's grid values but the seed, with their axis names (`method=lora,r=8`, so two grid
points that print alike are never pooled as seeds of one configuration), the base model (the `baseline` run)
first; with several folders, each key starts with its study's name. Columns are the tasks, their average and the
trainable-parameter %. Notation: configuration c, task t with N_t questions, k_c finished seeds;
x[q, s] in {0, 1}. The unit of independence is the question; seeds add training noise, never questions (E. Miller,
"Adding Error Bars to Evals", arXiv 2411.00640, plus a training-seed term).

1. Cell (c, t): a_s = mean over q of x[q, s]; mean = mean over s of a_s. 95 % interval:
   lower = mean - sqrt((mean - W_lo)² + h_s²), upper = mean + sqrt((W_hi - mean)² + h_s²), cut to [0, 1], where
   [W_lo, W_hi] is the Wilson score interval (z = 1.959964) of the proportion `mean` with n = N_t questions (never
   questions x seeds), and h_s = t(0.975, k - 1) · sd_s / sqrt(k), sd_s the sample sd (k - 1) of the a_s; h_s = 0
   when k = 1, and the report then says that the training noise is not measured (one seed).
2. Average column (the unweighted mean over the T tasks): A_s = mean over t of a[t, s]; mean = mean over s of
   A_s; h_q = 1.959964 · sqrt(Σ_t p_t (1 - p_t) / N_t) / T with p_t the cell's mean; h_s as in 1 on the A_s;
   interval mean ± sqrt(h_q² + h_s²), cut to [0, 1].
3. Comparison A vs B, on the tasks they share and the questions both answered in each task: D = avg_A - avg_B
   (the rows' averages over those tasks, so the sentences agree with the table); per question d[t, q] =
   m_A[t, q] - m_B[t, q], m a configuration's mean over its own seeds (no pairing of seeds by number);
   V_q = Σ_t var_q(d[t, ·]) / N_t / T² (sample variance, N_t - 1); V_s = sd²(A_s of A) / k_A + sd²(A_s of B) / k_B
   (a term only where k >= 2; the base model has none); SE = sqrt(V_q + V_s); z = D / SE; p = 2 (1 - Φ(|z|));
   where SE = 0, p = 1 if D = 0, else 0. Holm's step-down correction runs over all the comparisons of one
   report; a sentence says "beats" only where the Holm-adjusted p < 0.05, names the better configuration first
   with its own counts (questions where its mean is higher, and where the other's is), says "training noise not
   measured" where a side has one seed, and is labelled exploratory where a configuration was chosen as a
   method's best on the same data. With no question in common: one sentence that there is nothing to compare.
4. The comparisons: each method's best configuration (highest average) against the base model, within each
   method its best against each other configuration, and the methods' best against each other.
5. Pre-registered hypotheses (the spec's `hypotheses`): each contrast the study was run to test (better vs worse
   as the paper predicts, on the average or one task) is computed as in 3 and Holm-adjusted over the hypotheses
   alone (confirmatory); it held where the adjusted p < 0.05 and the difference has the predicted sign, was
   contradicted where the adjusted p < 0.05 and the sign is the other, and is not decided otherwise. Every other
   comparison is then exploratory (Holm over those).

Outputs: report.md, report.html (one self-contained file: the table, the plots inlined, a per-question
disagreement browser), table.csv (configuration, column, mean, sd, ci95_low, ci95_high, n_seeds, n_questions,
percent; full precision, sd empty for one seed), comparisons.csv (a, b, scope, difference, se, z, p, p_holm,
verdict, n_questions, a_better, b_better), records.json (`records.py`: per run x task, each question's outcome)
and the PNG plots (`plots.study_figures`: the 95 % intervals of 1-2, the base model as a labelled line).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from llm_adapters.files import write_json_atomic, write_text_atomic
from llm_adapters.study import statistics
from llm_adapters.study.records import StoreContents, read_store

TABLE_COLUMNS = ("configuration", "column", "mean", "sd", "ci95_low", "ci95_high", "n_seeds", "n_questions",
                 "percent")
COMPARISON_COLUMNS = ("a", "b", "scope", "difference", "se", "z", "p", "p_holm", "verdict", "n_questions",
                      "a_better", "b_better")
VERDICTS = ("a beats b", "b beats a", "inside the noise", "nothing to compare")
AVERAGE = "average"


# ------------------------------------------------------------------------------------------------ numbers

def outcomes_by_configuration(records: list[dict[str, Any]]) -> dict[str, dict[str, list[dict[int, bool]]]]:
    """configuration -> task -> one {question index: correct} per seed (run), in the records' order."""
    runs: dict[str, dict[str, dict[str, dict[int, bool]]]] = {}
    for record in records:
        runs.setdefault(record["configuration"], {}).setdefault(record["run_id"], {})[record["task"]] = \
            record["outcomes"]
    found: dict[str, dict[str, list[dict[int, bool]]]] = {}
    for key, by_run in runs.items():
        tasks = list(dict.fromkeys(t for run in by_run.values() for t in run))
        found[key] = {t: [run[t] for run in by_run.values() if t in run] for t in tasks}
    return found


def _per_seed(seeds: list[dict[int, bool]]) -> tuple[list[float], int]:
    """(a_s, N_t): each seed's accuracy on the questions every seed answered, and their number."""
    questions = set.intersection(*(set(seed) for seed in seeds))
    return [sum(seed[q] for q in questions) / len(questions) for seed in seeds] if questions else [], len(questions)


def average_of(outcomes: dict[str, list[dict[int, bool]]], tasks: list[str]) -> dict[str, Any] | None:
    """Definition 2 over `tasks` (those of them every seed has); None if there are none."""
    k = len(next(iter(outcomes.values())))
    accuracies, counts = {}, {}
    for task in tasks:
        if task in outcomes and len(outcomes[task]) == k:
            values, n = _per_seed(outcomes[task])
            if n:
                accuracies[task], counts[task] = values, n
    return statistics.average_cell(accuracies, counts) if accuracies else None


def table(records: list[dict[str, Any]], in_distribution: list[str] | None = None) -> dict[str, Any]:
    """Per configuration: a cell per task (definition 1) and the average (definition 2); with `in_distribution`,
    also the average over the in- and over the out-of-distribution tasks (for the RQ3 plot)."""
    outcomes = outcomes_by_configuration(records)
    first = {}
    for record in records:
        first.setdefault(record["configuration"], record)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    rows = {}
    for key, by_task in outcomes.items():
        cells = {}
        for task in tasks:
            if task in by_task:
                values, n = _per_seed(by_task[task])
                if n:
                    cells[task] = statistics.cell(values, n)
        cells[AVERAGE] = average_of(by_task, tasks)
        record = first[key]
        mine = [r for r in records if r["configuration"] == key]
        row = {"cells": cells, "percent": record["percent"], "method": record["method"],
               "baseline": record["baseline"], "study": record["study"], "values": record["values"],
               "placement": record["placement"], "runs": len({r["run_id"] for r in mine}),
               "seeds": sorted({r["seed"] for r in mine if r["seed"] is not None})}
        if in_distribution:
            inside = [t for t in tasks if t in in_distribution]
            row["groups"] = {"in-distribution": average_of(by_task, inside),
                             "out-of-distribution": average_of(by_task, [t for t in tasks if t not in inside])}
        rows[key] = row
    return {"tasks": tasks, "rows": rows, "in_distribution": list(in_distribution or [])}


def _pairs(summary: dict[str, Any]) -> list[tuple[str, str, str, str | None]]:
    """(a, b, scope, the configuration chosen as its method's best among several, or None), study by study: each
    method's best against the base model, within each method its best against the others, then the methods' best
    against each other (with several studies, scopes name the study)."""
    rows = summary["rows"]
    studies = list(dict.fromkeys(row["study"] for row in rows.values()))
    pairs = []
    for study in studies:
        where = f"{study}: " if len(studies) > 1 else ""
        base = next((key for key, row in rows.items() if row["study"] == study and row["baseline"]), None)
        members: dict[str, list[str]] = {}
        for key, row in rows.items():
            if row["study"] == study and not row["baseline"] and row["cells"][AVERAGE] is not None:
                members.setdefault(row["method"], []).append(key)
        best = {m: max(keys, key=lambda k: rows[k]["cells"][AVERAGE]["mean"]) for m, keys in members.items()}
        chosen = {best[m] for m, keys in members.items() if len(keys) > 1}
        if base is not None:
            pairs += [(top, base, f"{where}against the base model", top if top in chosen else None)
                      for top in best.values()]
        for method, top in best.items():
            pairs += [(top, key, f"{where}within {method}", top if top in chosen else None)
                      for key in members[method] if key != top]
        tops = list(best.values())
        for i, x in enumerate(tops):
            for y in tops[i + 1:]:
                pairs.append((x, y, f"{where}between methods", next((c for c in (x, y) if c in chosen), None)))
    return pairs


def comparisons(records: list[dict[str, Any]], summary: dict[str, Any],
                hypotheses: dict[str, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The report's paired comparisons (definition 3), each with its verdict: the pre-registered hypotheses
    (`hypotheses`: study name -> its spec's list) first, Holm-adjusted among themselves (definition 5), then the
    others, Holm-adjusted together (exploratory wherever there are hypotheses)."""
    outcomes = outcomes_by_configuration(records)
    rows = summary["rows"]
    confirmatory = _confirmatory(outcomes, rows, hypotheses or {})
    found = []
    for a, b, scope, chosen in _pairs(summary):
        numbers = statistics.paired_difference(outcomes[a], outcomes[b])
        found.append({"a": a, "b": b, "scope": scope, "exploratory": chosen is not None or bool(confirmatory),
                      "chosen": chosen, "method_of_chosen": rows[chosen]["method"] if chosen else None,
                      "one_seed": [k for k in (a, b) if not rows[k]["baseline"] and rows[k]["runs"] < 2],
                      **numbers})
    _adjust(confirmatory, registered=True)
    _adjust(found)
    return confirmatory + found


def _adjust(group: list[dict[str, Any]], registered: bool = False) -> None:
    """Holm over the comparisons of `group` that have a p-value, then each one's verdict. `registered` (the
    pre-registered hypotheses): the family is every hypothesis, also one that could not be tested (a
    configuration without a finished run counts with p = 1), so a failed run cannot make the others easier."""
    tested = [c for c in group if c["p"] is not None]
    untested = [] if not registered else [1.0] * (len(group) - len(tested))
    for c, adjusted in zip(tested, statistics.holm([c["p"] for c in tested] + untested)):
        c["p_holm"] = adjusted
    for c in group:
        c.setdefault("p_holm", None)
        c["verdict"] = ("nothing to compare" if c["p"] is None else "inside the noise"
                        if c["p_holm"] >= statistics.ALPHA else "a beats b" if c["difference"] > 0 else "b beats a")


def _confirmatory(outcomes: dict[str, dict[str, list[dict[int, bool]]]], rows: dict[str, dict[str, Any]],
                  hypotheses: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Definition 5's contrasts: a = the configuration predicted better, b = the one predicted worse."""
    several = len({row["study"] for row in rows.values()}) > 1
    found = []
    for study, entries in hypotheses.items():
        for number, entry in enumerate(entries, start=1):
            name = entry.get("name") or f"H{number}"
            column = entry.get("scope", AVERAGE)
            a, b = (_pick(entry[side], rows, study) for side in ("better", "worse"))
            label = f"{a or entry['better']} vs {b or entry['worse']}"
            if a is None or b is None:
                numbers = statistics.paired_difference({}, {})
            else:
                sides = [outcomes[k] if column == AVERAGE else {column: outcomes[k].get(column, [])} for k in (a, b)]
                numbers = statistics.paired_difference(*[{t: s for t, s in side.items() if s} for side in sides])
            found.append({"a": a or str(entry["better"]), "b": b or str(entry["worse"]),
                          "scope": f"{study + ': ' if several else ''}confirmatory {name} ({column})",
                          "hypothesis": name, "column": column, "source": entry.get("source"), "label": label,
                          "exploratory": False, "chosen": None, "method_of_chosen": None,
                          "one_seed": [k for k in (a, b) if k and not rows[k]["baseline"] and rows[k]["runs"] < 2],
                          **numbers})
    return found


def _pick(selector: Any, rows: dict[str, dict[str, Any]], study: str) -> str | None:
    """The row a hypothesis names (`spec.hypothesis_configuration`, on the report's rows)."""
    from llm_adapters.study.spec import BASELINE, _same_value

    mine = {k: r for k, r in rows.items() if r["study"] == study}
    if selector in (BASELINE, "base"):
        return next((k for k, r in mine.items() if r["baseline"]), None)
    if not isinstance(selector, dict):
        return None
    keys = [k for k, r in mine.items() if not r["baseline"]
            and all(_same_value(r["values"].get(axis), value) for axis, value in selector.items())]
    return keys[0] if len(keys) == 1 else None


def hypothesis_outcome(c: dict[str, Any]) -> str:
    """held, contradicted, not decided, or not tested (a configuration has no finished run)."""
    return {"a beats b": "held", "b beats a": "contradicted", "inside the noise": "not decided"}.get(
        c["verdict"], "not tested")


# ------------------------------------------------------------------------------------------------ words

def _points(value: float) -> str:
    return f"{100 * value:.1f}"


def _p(value: float) -> str:
    return f"{value:.1e}" if value < 0.001 else f"{value:.3f}"


def cell_text(stat: dict[str, Any] | None) -> str:
    """A cell at a readable precision: mean ± sd [95 % interval], in %."""
    if stat is None:
        return "–"
    spread = f" ± {_points(stat['sd'])}" if stat["sd"] is not None else ""
    return f"{_points(stat['mean'])}{spread} [{_points(stat['ci95'][0])}–{_points(stat['ci95'][1])}]"


def sentence(c: dict[str, Any]) -> str:
    """One comparison in words (the better configuration first, with its own counts, where one beats the other)."""
    if c["verdict"] == "nothing to compare":
        return f"{c['a']} vs {c['b']}: no question answered by both, nothing to compare."
    tests = f"p = {_p(c['p'])}, Holm-adjusted p = {_p(c['p_holm'])}"
    if c["verdict"] == "inside the noise":
        text = (f"{c['a']} vs {c['b']}: {100 * c['difference']:+.1f} points, inside the noise ({tests}; of "
                f"{c['n_questions']} questions, {c['a']} is higher on {c['a_better']} and {c['b']} on "
                f"{c['b_better']}).")
    else:
        a_first = c["verdict"] == "a beats b"
        better, worse = (c["a"], c["b"]) if a_first else (c["b"], c["a"])
        ours, theirs = (c["a_better"], c["b_better"]) if a_first else (c["b_better"], c["a_better"])
        text = (f"{better} beats {worse} by {100 * abs(c['difference']):.1f} points ({tests}; of "
                f"{c['n_questions']} questions, {better} is higher on {ours} and {worse} on {theirs}).")
    if c["one_seed"]:
        text += f" Training noise not measured ({', '.join(c['one_seed'])}: one seed)."
    if c.get("hypothesis"):
        text = (f"{c['hypothesis']} (pre-registered: {c['a']} better than {c['b']}, {c['column']}): "
                f"{hypothesis_outcome(c)}. " + text)
    elif c["chosen"]:
        text += (f" Exploratory: {c['chosen']} was chosen as {c['method_of_chosen']}'s best on these same "
                 "data.")
    elif c["exploratory"]:
        text += " Exploratory: not a pre-registered hypothesis."
    return text


def table_view(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table at a readable precision: (header, rows of text)."""
    tasks = summary["tasks"]
    header = ["configuration", "seeds", *tasks, AVERAGE, "#params %"]
    lines = []
    for key, row in summary["rows"].items():
        seeds = "–" if row["baseline"] else ",".join(map(str, row["seeds"])) + (" †" if row["runs"] < 2 else "")
        lines.append([key, seeds, *(cell_text(row["cells"].get(t)) for t in tasks),
                      cell_text(row["cells"][AVERAGE]), f"{row['percent']:.3f}"])
    return header, lines


TABLE_NOTE = ("Accuracy %: mean over seeds ± sd over seeds [95 % interval: the Wilson interval of the mean for "
              "the task's questions combined with Student's t over the seeds]. Average: the unweighted mean over "
              "the tasks, its interval from the question noise of every task and the seeds' spread of the "
              "per-seed averages. † one seed: the training noise is not measured (the interval holds the "
              "question noise only). The base model is evaluated once and has no training noise.")


def comparison_view(found: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The comparisons at a readable precision: (header, rows of text)."""
    header = ["A", "B", "scope", "A - B (points)", "SE", "z", "p", "Holm p", "verdict", "questions", "A higher",
              "B higher"]
    lines = []
    for c in found:
        if c["p"] is None:
            numbers = ["–"] * 5
        else:
            numbers = [f"{100 * c['difference']:+.1f}", _points(c["se"]),
                       "–" if c["z"] is None else f"{c['z']:+.2f}", _p(c["p"]), _p(c["p_holm"])]
        lines.append([c["a"], c["b"], scope_text(c), *numbers, c["verdict"], str(c["n_questions"]),
                      str(c["a_better"]), str(c["b_better"])])
    return header, lines


def scope_text(c: dict[str, Any]) -> str:
    return f"{c['scope']}, exploratory" if c["exploratory"] else c["scope"]


COMPARISON_NOTE = ("Paired on the same questions: each configuration's mean over its own seeds per question; SE "
                   "from the questions' differences and each side's seed spread; p two-sided (normal), Holm-"
                   "adjusted over the comparisons below that are not pre-registered hypotheses (those form a "
                   "family of their own, above); \"beats\" only where the Holm-adjusted p < 0.05. Exploratory: a "
                   "method's best configuration was chosen on these same data, or (where the study pre-registered "
                   "hypotheses) any comparison that is not one of them.")


def _is_number(text: str) -> bool:
    try:
        float(text.split()[0])
    except (ValueError, IndexError):
        return text == "–"
    return True


def _markdown_table(header: list[str], lines: list[list[str]]) -> list[str]:
    numeric = ["---:" if lines and all(_is_number(line[i]) for line in lines) else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "|" + "|".join(numeric) + "|"] + \
        ["| " + " | ".join(line) + " |" for line in lines]


def markdown(title: str, summary: dict[str, Any], found: list[dict[str, Any]], contents: StoreContents,
             plots: list[Path]) -> str:
    runs = len({r["run_id"] for r in contents.records})
    lines = [f"# {title}", "", f"{runs} run(s) finished, {len(contents.failed)} failed.", ""]
    lines += _markdown_table(*table_view(summary)) + ["", TABLE_NOTE, ""]
    confirmatory = [c for c in found if c.get("hypothesis")]
    if confirmatory:
        lines += ["## Pre-registered hypotheses", "", HYPOTHESES_NOTE, ""]
        lines += _markdown_table(*hypotheses_view(confirmatory)) + [""]
    lines += ["## Comparisons", "", COMPARISON_NOTE, ""]
    if found:
        lines += _markdown_table(*comparison_view(found)) + [""] + [f"- {c['scope']}: {sentence(c)}" for c in found]
    else:
        lines.append("- (one configuration: nothing to compare)")
    if contents.failed:
        lines += ["", "## Failed runs", ""] + [f"- {f['name']} ({f['id']}): {f['error']}" for f in contents.failed]
    lines += [f"\n![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ files

HYPOTHESES_NOTE = ("The contrasts written into the spec before the study ran, as the paper predicts them (A better "
                   "than B). Difference: A - B in accuracy points, with its 95 % interval (D ± 1.96 SE, definition "
                   "3); Holm p: adjusted over these hypotheses alone (every one registered, an untested one with "
                   "p = 1). Held: Holm p < 0.05 in the predicted "
                   "direction; contradicted: Holm p < 0.05 in the other; not decided: inside the noise.")


def hypotheses_view(found: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The confirmatory contrasts at a readable precision: (header, rows of text)."""
    header = ["hypothesis", "predicted: A better than B", "column", "difference (points)", "95 % interval", "p",
              "Holm p", "outcome"]
    lines = []
    for c in found:
        if c["p"] is None:
            lines.append([c["hypothesis"], f"{c['a']} > {c['b']}", c["column"], "–", "–", "–", "–", "not tested"])
            continue
        half = statistics.Z95 * c["se"]
        lines.append([c["hypothesis"], f"{c['a']} > {c['b']}", c["column"], f"{100 * c['difference']:+.1f}",
                      f"[{100 * (c['difference'] - half):+.1f}, {100 * (c['difference'] + half):+.1f}]",
                      _p(c["p"]), _p(c["p_holm"]), hypothesis_outcome(c)])
    return header, lines


def table_csv(summary: dict[str, Any]) -> str:
    """table.csv: one line per configuration x column, full precision (`sd` empty for one seed)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TABLE_COLUMNS)
    for key, row in summary["rows"].items():
        for column, stat in row["cells"].items():
            if stat is not None:
                writer.writerow([key, column, stat["mean"], stat["sd"], *stat["ci95"], stat["n_seeds"],
                                 stat["n_questions"], row["percent"]])
    return buffer.getvalue()


def comparisons_csv(found: list[dict[str, Any]]) -> str:
    """comparisons.csv: one line per comparison, full precision (empty where there is nothing to compare)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COMPARISON_COLUMNS)
    for c in found:
        writer.writerow([c["a"], c["b"], scope_text(c), c["difference"], c["se"], c["z"], c["p"], c["p_holm"],
                         c["verdict"], c["n_questions"], c["a_better"], c["b_better"]])
    return buffer.getvalue()


def records_json(records: list[dict[str, Any]]) -> str:
    """records.json: one record per line (question indices become JSON's string keys; `records.from_json`)."""
    return "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n"


def write_report(folders: list[str | Path], out: str | Path | None = None) -> dict[str, Any]:
    """Write report.md, report.html, table.csv, comparisons.csv, records.json, specs.json and the plots into `out`
    (default: the first folder's report/).

    Raises:
        MissingInputError: a folder that is not a study folder.
    """
    from llm_adapters.plots import study_figures
    from llm_adapters.study.html import render_html
    from llm_adapters.study.records import answers

    contents = read_store(folders)
    out = Path(out) if out else Path(folders[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if not contents.records:
        text = "No finished run yet.\n" + "".join(f"- failed: {f['name']}: {f['error']}\n" for f in contents.failed)
        write_text_atomic(out / "report.md", text)
        return {"markdown": text, "folder": str(out), "plots": []}
    in_distribution = [t for spec in contents.specs.values() for t in spec.get("in_distribution", [])]
    summary = table(contents.records, in_distribution)
    hypotheses = {name: spec.get("hypotheses") or [] for name, spec in contents.specs.items()}
    found = comparisons(contents.records, summary, {k: v for k, v in hypotheses.items() if v})
    title = " + ".join(contents.specs)
    plots = study_figures(summary, out)
    text = markdown(title, summary, found, contents, plots)
    write_text_atomic(out / "report.md", text)
    write_text_atomic(out / "table.csv", table_csv(summary))
    write_text_atomic(out / "comparisons.csv", comparisons_csv(found))
    write_text_atomic(out / "records.json", records_json(contents.records))
    # the specs the runs ran with (their hypotheses among them): with records.json, all a report is computed from
    write_json_atomic(out / "specs.json", contents.specs)
    confirmed = [c for c in found if c.get("hypothesis")]
    page = render_html(title, table_view(summary), comparison_view(found), [sentence(c) for c in found],
                       plots, answers(contents), notes=(TABLE_NOTE, COMPARISON_NOTE),
                       hypotheses=(*hypotheses_view(confirmed), HYPOTHESES_NOTE) if confirmed else None)
    write_text_atomic(out / "report.html", page)
    return {"markdown": text, "folder": str(out), "plots": [str(p) for p in plots], "table": summary,
            "comparisons": found}
