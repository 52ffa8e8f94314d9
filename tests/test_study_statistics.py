"""A study report's numbers against independent computations written here (not the report's functions), on
hand-made per-question outcomes: the cell and average intervals, the paired difference, Holm, the minimum
detectable difference, and the cases the pooled definitions got wrong (identical seeds, relabelled seeds,
disjoint seed sets, unequal task sizes, counts attributed to the wrong names, colliding grid entries)."""
from __future__ import annotations

import csv
import html.parser
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from llm_adapters.study import build_study, expand, statistics
from llm_adapters.study import report as reports
from llm_adapters.study import store
from llm_adapters.study.records import from_json, load_study_records

Z = 1.959964  # the issue's z
T975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}  # Student's t, 0.975 quantile, from a printed table


# --- independent computations ------------------------------------------------------------------------------------

def wilson(p: float, n: int) -> tuple[float, float]:
    """The Wilson score interval of a proportion p with n trials, written out."""
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def sample_var(values: list[float]) -> float:
    m = mean(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def expected_cell(per_seed: list[list[int]]) -> tuple[float, float, float]:
    """Definition 1 by hand: per_seed[s][q] in {0, 1}."""
    n, k = len(per_seed[0]), len(per_seed)
    a = [mean(seed) for seed in per_seed]
    m = mean(a)
    lo, hi = wilson(m, n)
    h_s = T975[k - 1] * math.sqrt(sample_var(a)) / math.sqrt(k) if k > 1 else 0.0
    return m, max(0.0, m - math.sqrt((m - lo) ** 2 + h_s ** 2)), min(1.0, m + math.sqrt((hi - m) ** 2 + h_s ** 2))


def expected_difference(a: dict[str, list[list[int]]], b: dict[str, list[list[int]]]) -> dict[str, float]:
    """Definition 3 by hand, every question shared: a[task][s][q]."""
    tasks = list(a)
    v_q, a_better, b_better = 0.0, 0, 0
    for t in tasks:
        n = len(a[t][0])
        m_a = [mean([seed[q] for seed in a[t]]) for q in range(n)]
        m_b = [mean([seed[q] for seed in b[t]]) for q in range(n)]
        d = [x - y for x, y in zip(m_a, m_b)]
        v_q += sample_var(d) / n / len(tasks) ** 2
        a_better += sum(x > y for x, y in zip(m_a, m_b))
        b_better += sum(y > x for x, y in zip(m_a, m_b))
    avg = {side: [mean([mean(outcomes[t][s]) for t in tasks]) for s in range(len(outcomes[tasks[0]]))]
           for side, outcomes in (("a", a), ("b", b))}
    v_s = sum(sample_var(values) / len(values) for values in avg.values() if len(values) > 1)
    difference = mean(avg["a"]) - mean(avg["b"])
    se = math.sqrt(v_q + v_s)
    z = difference / se
    return {"difference": difference, "se": se, "z": z, "p": 2 * (1 - phi(abs(z))), "a_better": a_better,
            "b_better": b_better}


def as_outcomes(per_seed: list[list[int]]) -> list[dict[int, bool]]:
    return [{q: bool(x) for q, x in enumerate(seed)} for seed in per_seed]


def bits(correct: int, n: int, shift: int = 0) -> list[int]:
    """n outcomes with `correct` ones, rotated by `shift` (which questions are right)."""
    row = [1] * correct + [0] * (n - correct)
    return row[shift:] + row[:shift]


# --- definition 1: the cell --------------------------------------------------------------------------------------

def test_cell_interval_combines_wilson_for_the_questions_with_t_over_the_seeds():
    per_seed = [bits(7, 10), bits(8, 10, 1), bits(6, 10, 2)]
    found = statistics.cell([mean(s) for s in per_seed], 10)
    m, low, high = expected_cell(per_seed)
    assert found["mean"] == pytest.approx(0.7)
    assert found["sd"] == pytest.approx(0.1)
    assert found["ci95"] == pytest.approx((low, high), rel=1e-4)
    # By hand: Wilson(0.7, 10) = (0.39676, 0.89223); h_s = 4.3027 * 0.1 / sqrt(3) = 0.24841; the upper end,
    # 0.7 + 0.31410, is cut at 1.
    assert found["ci95"] == pytest.approx((0.7 - math.hypot(0.7 - 0.39676, 0.24841), 1.0), abs=2e-4)


def test_one_seed_cell_is_the_wilson_interval_of_its_questions_and_says_so():
    found = statistics.cell([0.0], 30)
    assert found["sd"] is None and found["seed_half_width"] == 0
    assert found["ci95"] == pytest.approx((0.0, wilson(0.0, 30)[1]), abs=1e-6)
    assert found["ci95"][1] == pytest.approx(0.1135, abs=1e-4)  # "30 questions give [0-11.4]"


def test_identical_seeds_do_not_shrink_a_cell_interval():
    one = statistics.cell([0.4], 30)
    for k in (2, 5):
        same = statistics.cell([0.4] * k, 30)
        assert same["ci95"] == pytest.approx(one["ci95"])
        assert same["ci95"] == pytest.approx(wilson(0.4, 30))  # n = 30 questions, never 30 x k


def test_cell_interval_is_cut_to_zero_and_one():
    found = statistics.cell([1.0, 0.9], 10)
    assert found["ci95"][1] == 1.0 and found["ci95"][0] >= 0.0


# --- definition 2: the average -----------------------------------------------------------------------------------

def test_average_interval_adds_each_tasks_question_noise_and_the_seed_spread_of_the_averages():
    accuracies = {"gsm8k": [0.7, 0.8, 0.6], "svamp": [0.5, 0.6, 0.4]}
    found = statistics.average_cell(accuracies, {"gsm8k": 10, "svamp": 20})
    per_seed = [0.6, 0.7, 0.5]
    h_q = Z * math.sqrt(0.7 * 0.3 / 10 + 0.5 * 0.5 / 20) / 2
    h_s = T975[2] * math.sqrt(sample_var(per_seed)) / math.sqrt(3)
    half = math.sqrt(h_q ** 2 + h_s ** 2)
    assert found["mean"] == pytest.approx(0.6)
    assert found["sd"] == pytest.approx(0.1)
    assert found["ci95"] == pytest.approx((0.6 - half, 0.6 + half), rel=1e-4)
    assert found["n_questions"] == 30


def test_unequal_task_sizes_keep_the_average_inside_its_interval():
    # One seed, 1000 questions at 90 % and 10 at 10 %: the unweighted mean is 50 %, and its interval holds it
    # (the pooled Wilson said [87-91]).
    found = statistics.average_cell({"big": [0.9], "small": [0.1]}, {"big": 1000, "small": 10})
    h_q = Z * math.sqrt(0.9 * 0.1 / 1000 + 0.1 * 0.9 / 10) / 2
    assert found["mean"] == pytest.approx(0.5)
    assert found["ci95"] == pytest.approx((0.5 - h_q, 0.5 + h_q), rel=1e-6)
    assert found["ci95"][0] < 0.5 < found["ci95"][1]


# --- definition 3: the paired difference ---------------------------------------------------------------------------

A = {"gsm8k": [[1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 1]], "svamp": [[1, 0, 0, 1], [1, 1, 0, 1]]}
B = {"gsm8k": [[0, 1, 0, 0, 1, 0]], "svamp": [[1, 0, 0, 0]]}


def test_paired_difference_matches_the_definition_on_two_tasks_and_unequal_seeds():
    found = statistics.paired_difference({t: as_outcomes(v) for t, v in A.items()},
                                         {t: as_outcomes(v) for t, v in B.items()})
    expected = expected_difference(A, B)
    for key in ("difference", "se", "z", "p", "a_better", "b_better"):
        assert found[key] == pytest.approx(expected[key]), key
    assert found["n_questions"] == 10 and (found["seeds_a"], found["seeds_b"]) == (2, 1)


def test_identical_seeds_do_not_shrink_a_p_value():
    a = {"t": [bits(12, 30)]}
    b = {"t": [bits(8, 30, 3)]}
    one = statistics.paired_difference({"t": as_outcomes(a["t"])}, {"t": as_outcomes(b["t"])})
    for k in (2, 5):
        many = statistics.paired_difference({"t": as_outcomes(a["t"] * k)}, {"t": as_outcomes(b["t"] * k)})
        assert many["p"] == pytest.approx(one["p"]) and many["se"] == pytest.approx(one["se"])
    assert one["p"] == pytest.approx(expected_difference(a, b)["p"])


def test_disjoint_seed_sets_compare_on_their_questions():
    # Seeds 1, 2 against seeds 3, 4: no seed in common, yet the same questions: a difference with a p-value.
    a = {"t": [bits(20, 30), bits(22, 30, 5)]}
    b = {"t": [bits(10, 30, 1), bits(12, 30, 7)]}
    found = statistics.paired_difference({"t": as_outcomes(a["t"])}, {"t": as_outcomes(b["t"])})
    assert found["n_questions"] == 30
    assert found["difference"] == pytest.approx(21 / 30 - 11 / 30)
    assert found["p"] == pytest.approx(expected_difference(a, b)["p"])


def test_zero_standard_error_gives_p_one_without_a_difference_and_zero_with_one():
    same = statistics.paired_difference({"t": as_outcomes([[1, 0, 1]])}, {"t": as_outcomes([[1, 0, 1]])})
    assert (same["difference"], same["se"], same["p"]) == (0, 0, 1.0)
    # Every question differs by the same amount: var(d) = 0, one seed each: SE = 0 while D = 1.
    apart = statistics.paired_difference({"t": as_outcomes([[1, 1, 1]])}, {"t": as_outcomes([[0, 0, 0]])})
    assert (apart["difference"], apart["se"], apart["p"]) == (1, 0, 0.0)


def test_no_question_in_common_gives_nothing_to_compare():
    found = statistics.paired_difference({"gsm8k": as_outcomes([[1, 0]])}, {"svamp": as_outcomes([[1, 1]])})
    assert found["n_questions"] == 0 and found["p"] is None and found["difference"] is None


def test_only_the_questions_both_answered_count():
    a = [{0: True, 1: False, 2: True}]
    b = [{1: True, 2: True, 3: False}]
    found = statistics.paired_difference({"t": a}, {"t": b})
    assert found["n_questions"] == 2 and found["difference"] == pytest.approx(0.5 - 1.0)


# --- Holm and the minimum detectable difference ---------------------------------------------------------------------

def test_holm_on_a_known_list():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> running max 0.06.
    assert statistics.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert statistics.holm([0.5, 0.2, 0.9]) == pytest.approx([1.0, 0.6, 1.0])  # 0.2 x 3, 0.5 x 2 -> 1 (cut)
    assert statistics.holm([0.04]) == [0.04]


def test_minimum_detectable_difference_matches_the_formula():
    z = 1.959964 + 0.841621  # z_0.975 + z_0.80
    found = statistics.minimum_detectable_difference({"a": 100, "b": 400}, {"a": 0.5, "b": 0.2}, seed_sd=0.02,
                                                     correlation=0.5, k_a=3, k_b=3)
    v_s = 0.02 ** 2 / 3 * 2
    assert found["a"] == pytest.approx(z * math.sqrt(2 * 0.25 * 0.5 / 100 + v_s), rel=1e-5)
    assert found["b"] == pytest.approx(z * math.sqrt(2 * 0.16 * 0.5 / 400 + v_s), rel=1e-5)
    v_q = (2 * 0.25 * 0.5 / 100 + 2 * 0.16 * 0.5 / 400) / 4
    assert found["average"] == pytest.approx(z * math.sqrt(v_q + v_s), rel=1e-5)
    base = statistics.minimum_detectable_difference({"a": 100}, {"a": 0.5}, 0.02, 0.5, k_a=3, k_b=0)
    assert base["a"] == pytest.approx(z * math.sqrt(2 * 0.25 * 0.5 / 100 + 0.02 ** 2 / 3), rel=1e-5)


# --- the report, on a hand-made store --------------------------------------------------------------------------------

def write_run(out: Path, run_id: str, values: dict[str, Any], seed: int | None, tasks: dict[str, list[int]],
              percent: float = 0.5, baseline: bool = False, study: str = "hand") -> None:
    folder = out / "runs" / f"{run_id}"
    folder.mkdir(parents=True)
    method = "base" if baseline else values.get("method", "lora")
    for task, outcomes in tasks.items():
        (folder / "eval" / task).mkdir(parents=True)
        (folder / "eval" / task / "predictions.jsonl").write_text("".join(json.dumps(
            {"index": q, "prompt": f"{task} question {q} <b>?</b>", "gold": str(q), "generation":
             f"{run_id} says </script> {q if x else -1}", "prediction": str(q if x else -1), "correct": bool(x)})
            + "\n" for q, x in enumerate(outcomes)))
    (folder / store.RESULT).write_text(json.dumps({
        "id": run_id, "name": run_id, "study": study, "values": values if not baseline else {},
        "baseline": baseline, "method": method, "placement": values.get("placement"), "seed": seed,
        "parameters": {"percent": 0.0 if baseline else percent},
        "tasks": {t: {"accuracy": mean(o), "n": len(o), "correct": sum(o), "outcomes": [bool(x) for x in o]}
                  for t, o in tasks.items()}}))


def hand_store(tmp_path: Path, runs: list[tuple], grid: dict | list | None = None, name: str = "hand") -> Path:
    out = tmp_path / name
    out.mkdir()
    (out / store.STUDY_FILE).write_text(json.dumps({"name": name, "spec": {"name": name, "grid": grid or {}}}))
    for run in runs:
        write_run(out, *run, study=name)
    return out


def report_of(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    records = load_study_records(out)
    summary = reports.table(records)
    return summary, reports.comparisons(records, summary)


GSM, SVAMP = 30, 20


@pytest.fixture
def study(tmp_path) -> Path:
    """A base model, LoRA at two placements (seeds 1, 2), Series at one (seeds 3, 4: no seed shared)."""
    lora_attn = {"method": "lora", "placement": "attn"}
    lora_mlp = {"method": "lora", "placement": "mlp"}
    series = {"method": "series", "placement": "mlp"}
    return hand_store(tmp_path, [
        ("base", {}, None, {"gsm8k": bits(3, GSM), "svamp": bits(2, SVAMP)}, 0.0, True),
        ("la1", {**lora_attn, "seed": 1}, 1, {"gsm8k": bits(15, GSM), "svamp": bits(9, SVAMP)}),
        ("la2", {**lora_attn, "seed": 2}, 2, {"gsm8k": bits(17, GSM, 2), "svamp": bits(11, SVAMP, 1)}),
        ("lm1", {**lora_mlp, "seed": 1}, 1, {"gsm8k": bits(10, GSM, 4), "svamp": bits(8, SVAMP)}),
        ("lm2", {**lora_mlp, "seed": 2}, 2, {"gsm8k": bits(12, GSM), "svamp": bits(8, SVAMP, 3)}),
        ("se3", {**series, "seed": 3}, 3, {"gsm8k": bits(11, GSM, 7), "svamp": bits(9, SVAMP, 2)}, 0.2),
        ("se4", {**series, "seed": 4}, 4, {"gsm8k": bits(13, GSM, 1), "svamp": bits(7, SVAMP, 5)}, 0.2),
    ], grid={"method": ["lora", "series"], "placement": ["attn", "mlp"], "seed": [1, 2, 3, 4]})


def test_report_table_is_definitions_1_and_2_with_the_base_model_first(study):
    summary, _ = report_of(study)
    assert list(summary["rows"]) == ["base model", "method=lora,placement=attn", "method=lora,placement=mlp",
                                     "method=series,placement=mlp"]
    cell = summary["rows"]["method=lora,placement=attn"]["cells"]["gsm8k"]
    m, low, high = expected_cell([bits(15, GSM), bits(17, GSM, 2)])
    assert (cell["mean"], *cell["ci95"]) == pytest.approx((m, low, high), rel=1e-4)
    base = summary["rows"]["base model"]["cells"]["average"]
    h_q = Z * math.sqrt(0.1 * 0.9 / GSM + 0.1 * 0.9 / SVAMP) / 2
    assert base["ci95"] == pytest.approx((0.1 - h_q, 0.1 + h_q), rel=1e-5)


def test_report_compares_each_best_with_the_base_model_within_and_between_methods_with_holm(study):
    _, found = report_of(study)
    pairs = [(c["a"], c["b"], c["scope"], c["exploratory"]) for c in found]
    assert pairs == [
        ("method=lora,placement=attn", "base model", "against the base model", True),
        ("method=series,placement=mlp", "base model", "against the base model", False),
        ("method=lora,placement=attn", "method=lora,placement=mlp", "within lora", True),
        ("method=lora,placement=attn", "method=series,placement=mlp", "between methods", True)]
    ps = []
    for c, (a, b) in zip(found, [("la", "base"), ("se", "base"), ("la", "lm"), ("la", "se")]):
        expected = expected_difference(*(_outcomes(study, x) for x in (a, b)))
        assert c["difference"] == pytest.approx(expected["difference"])
        assert c["p"] == pytest.approx(expected["p"])
        ps.append(expected["p"])
    order = sorted(range(4), key=lambda i: ps[i])
    holm, running = [0.0] * 4, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1, (4 - rank) * ps[i]))
        holm[i] = running
    assert [c["p_holm"] for c in found] == pytest.approx(holm)
    assert [c["verdict"] for c in found] == ["a beats b" if h < 0.05 and c["difference"] > 0 else
                                             "b beats a" if h < 0.05 else "inside the noise"
                                             for c, h in zip(found, holm)]
    assert found[0]["verdict"] == "a beats b"  # LoRA attn (about 52 %) against the base (10 %)
    assert "Exploratory: method=lora,placement=attn was chosen as lora's best" in reports.sentence(found[0])
    assert "Exploratory" not in reports.sentence(found[1])  # Series has one configuration: nothing was chosen


def _outcomes(out: Path, prefix: str) -> dict[str, list[list[int]]]:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob(f"{prefix}*/result.json"))]
    return {t: [[int(x) for x in r["tasks"][t]["outcomes"]] for r in runs] for t in runs[0]["tasks"]}


def test_relabelled_seeds_do_not_change_a_comparison(study, tmp_path):
    _, before = report_of(study)
    for path in (study / "runs").glob("*/result.json"):  # LoRA's seeds 1, 2 become 2, 1 and Series' 3, 4 become 9, 8
        result = json.loads(path.read_text())
        if result["seed"] is not None:
            result["seed"] = {1: 2, 2: 1, 3: 9, 4: 8}[result["seed"]]
            result["values"]["seed"] = result["seed"]
            path.write_text(json.dumps(result))
    _, after = report_of(study)
    keys = ("a", "b", "difference", "se", "p", "p_holm", "verdict", "a_better", "b_better")
    assert [{k: c[k] for k in keys} for c in after] == [{k: pytest.approx(c[k]) if isinstance(c[k], float) else c[k]
                                                          for k in keys} for c in before]


def test_the_better_configuration_is_named_first_with_its_own_counts(tmp_path):
    # The methods' best in grid order: A = LoRA, the weaker, B = Series, the stronger: "B beats A", with B's count
    # (questions where B is higher) first.
    out = hand_store(tmp_path, [
        ("weak", {"method": "lora", "r": 4}, 1, {"t": bits(5, 40)}),
        ("strong", {"method": "series", "r": 8}, 1, {"t": bits(30, 40, 1)}),
    ], grid={"method": ["lora", "series"], "r": [4, 8]})
    _, (c,) = report_of(out)
    assert (c["a"], c["b"], c["verdict"]) == ("method=lora,r=4", "method=series,r=8", "b beats a")
    m_a, m_b = bits(5, 40), bits(30, 40, 1)
    a_higher = sum(x > y for x, y in zip(m_a, m_b))
    b_higher = sum(y > x for x, y in zip(m_a, m_b))
    assert (c["a_better"], c["b_better"]) == (a_higher, b_higher) and b_higher > a_higher
    text = reports.sentence(c)
    assert text.startswith(f"method=series,r=8 beats method=lora,r=4 by {100 * 25 / 40:.1f} points")
    assert f"method=series,r=8 is higher on {b_higher} and method=lora,r=4 on {a_higher}" in text
    assert "Training noise not measured (method=lora,r=4, method=series,r=8: one seed)" in text


def test_a_colliding_grid_stays_two_rows():
    spec = {"name": "c", "base_model": "tiny-llama", "data": {"builder": "synthetic-arithmetic", "n": 8},
            "grid": [{"method": ["lora"], "r": [8]}, {"method": ["lora"], "alpha": [8]}], "baseline": False}
    runs = expand(build_study(spec))
    assert [r.configuration for r in runs] == ["method=lora,r=8", "method=lora,alpha=8"]


def test_a_colliding_grid_in_the_store_stays_two_rows(tmp_path):
    out = hand_store(tmp_path, [("r8", {"method": "lora", "r": 8}, 1, {"t": bits(3, 10)}),
                                ("a8", {"method": "lora", "alpha": 8}, 1, {"t": bits(7, 10)})],
                     grid=[{"method": ["lora"], "r": [8]}, {"method": ["lora"], "alpha": [8]}])
    summary, _ = report_of(out)
    assert list(summary["rows"]) == ["method=lora,r=8", "method=lora,alpha=8"]
    assert [row["cells"]["t"]["n_seeds"] for row in summary["rows"].values()] == [1, 1]


def test_nothing_to_compare_is_one_sentence_without_a_p_value(tmp_path):
    out = hand_store(tmp_path, [("x", {"method": "lora", "r": 4}, 1, {"gsm8k": bits(3, 10)}),
                                ("y", {"method": "lora", "r": 8}, 1, {"svamp": bits(7, 10)})])
    _, (c,) = report_of(out)
    assert (c["verdict"], c["p"], c["p_holm"], c["n_questions"]) == ("nothing to compare", None, None, 0)
    assert reports.sentence(c).endswith("no question answered by both, nothing to compare.")
    assert "p =" not in reports.sentence(c)


def test_several_studies_keep_their_rows_apart_and_compare_each_with_its_own_base_model(tmp_path):
    folders = [hand_store(tmp_path, [("base", {}, None, {"t": bits(2, 20)}, 0.0, True),
                                     (f"{name}1", {"method": "lora", "seed": 1}, 1, {"t": bits(correct, 20)})],
                          grid={"method": ["lora"], "seed": [1]}, name=name)
               for name, correct in (("small", 6), ("large", 16))]
    records = load_study_records(folders)
    summary = reports.table(records)
    assert list(summary["rows"]) == ["small: base model", "small: method=lora", "large: base model",
                                     "large: method=lora"]
    found = reports.comparisons(records, summary)
    assert [(c["a"], c["b"], c["scope"]) for c in found] == [
        ("small: method=lora", "small: base model", "small: against the base model"),
        ("large: method=lora", "large: base model", "large: against the base model")]
    assert found[1]["difference"] == pytest.approx(16 / 20 - 2 / 20)


# --- the files ------------------------------------------------------------------------------------------------------

def test_report_files_have_the_columns_the_issue_names_and_full_precision(study, tmp_path):
    result = reports.write_report([study], tmp_path / "report")
    folder = Path(result["folder"])
    rows = list(csv.DictReader(io.StringIO((folder / "table.csv").read_text())))
    assert list(rows[0]) == ["configuration", "column", "mean", "sd", "ci95_low", "ci95_high", "n_seeds",
                             "n_questions", "percent"]
    base = [r for r in rows if r["configuration"] == "base model"]
    assert [r["column"] for r in base] == ["gsm8k", "svamp", "average"] and base[0]["sd"] == ""
    cell = next(r for r in rows if r["configuration"] == "method=lora,placement=attn" and r["column"] == "gsm8k")
    assert float(cell["mean"]) == 16 / 30 and (cell["n_seeds"], cell["n_questions"]) == ("2", "30")
    assert float(cell["ci95_low"]) == pytest.approx(expected_cell([bits(15, GSM), bits(17, GSM, 2)])[1], rel=1e-4)
    found = list(csv.DictReader(io.StringIO((folder / "comparisons.csv").read_text())))
    assert list(found[0]) == ["a", "b", "scope", "difference", "se", "z", "p", "p_holm", "verdict", "n_questions",
                              "a_better", "b_better"]
    assert found[0]["scope"] == "against the base model, exploratory" and found[0]["n_questions"] == "50"
    assert {c["verdict"] for c in found} <= set(reports.VERDICTS) and found[3]["z"] != ""
    text = (folder / "report.md").read_text()
    assert "| base model | – |" in text and "Holm" in text and "![accuracy-vs-params](accuracy-vs-params.png)" in text


def test_records_json_alone_recomputes_every_number(study, tmp_path):
    folder = Path(reports.write_report([study], tmp_path / "report")["folder"])
    again = from_json((folder / "records.json").read_text())
    assert again == load_study_records(study)
    summary = reports.table(again)
    rebuilt = reports.table_csv(summary), reports.comparisons_csv(reports.comparisons(again, summary))
    assert rebuilt == ((folder / "table.csv").read_text(), (folder / "comparisons.csv").read_text())
    record = next(r for r in again if r["run_id"] == "la2" and r["task"] == "svamp")
    assert record["outcomes"] == {q: bool(x) for q, x in enumerate(bits(11, SVAMP, 1))}


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls, self.scripts, self.cells, self._script, self._cell = [], {}, [], None, False
        self.headings, self._heading = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "script":
            self._script = attrs.get("id", "inline")
            self.scripts[self._script] = ""
        self._cell = tag == "td"
        self._heading = tag == "h2"

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None

    def handle_data(self, data):
        if self._script:
            self.scripts[self._script] += data
        elif self._cell:
            self.cells.append(data)
            self._cell = False
        elif self._heading:
            self.headings.append(data)
            self._heading = False


def test_report_html_is_one_file_without_network_with_the_table_and_the_disagreements(study, tmp_path):
    folder = Path(reports.write_report([study], tmp_path / "report")["folder"])
    page = (folder / "report.html").read_text()
    parser = _Links()
    parser.feed(page)
    assert parser.urls and all(url.startswith("data:image/png;base64,") for url in parser.urls)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page, re.I)
    assert "base model" in parser.cells and "method=series,placement=mlp" in parser.cells
    data = json.loads(parser.scripts["browser-data"])
    assert [run["run"] for run in data["configurations"]["method=lora,placement=attn"]] == ["la1", "la2"]
    # A generation that holds "</script>" stays inside the data, and each answer is [correct, prediction, text].
    assert data["answers"]["la2"]["gsm8k"]["3"] == [1, "3", "la2 says </script> 3"]
    assert data["answers"]["base"]["gsm8k"]["3"] == [0, "-1", "base says </script> -1"]
    assert data["questions"]["svamp"]["0"] == {"prompt": "svamp question 0 <b>?</b>", "gold": "0"}
    assert "inline" in parser.scripts and "addEventListener" in parser.scripts["inline"]


def test_plots_draw_the_95_percent_intervals_and_the_base_model_as_a_labelled_line(tmp_path, monkeypatch):
    from llm_adapters import plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda plt, figure, path: figures.append(figure) or path)

    def row(mean: float, low: float, high: float, method: str, placement: str, baseline: bool = False) -> dict:
        stat = {"mean": mean, "sd": 0.3, "ci95": (low, high)}  # an sd unlike the interval: the bars must not use it
        return {"cells": {"average": stat}, "baseline": baseline, "method": method, "percent": 0.5,
                "values": {} if baseline else {"method": method, "placement": placement}, "study": "s"}

    summary = {"tasks": [], "in_distribution": [], "rows": {
        "base model": row(0.1, 0.05, 0.2, "base", "", baseline=True),
        "method=lora,placement=attn": row(0.5, 0.3, 0.8, "lora", "attn"),
        "method=lora,placement=mlp": row(0.4, 0.35, 0.42, "lora", "mlp")}}
    drawn = plots.study_figures(summary, tmp_path)
    assert [p.name for p in drawn] == ["rq1-placement.png", "accuracy-vs-params.png"]
    for figure in figures:
        axis = figure.axes[0]
        segments = [s for c in axis.collections for s in c.get_segments()]  # the error bars' vertical lines
        spans = sorted((round(s[0][1], 6), round(s[1][1], 6)) for s in segments)
        assert spans == [(30.0, 80.0), (35.0, 42.0)]
        (base,) = [line for line in axis.get_lines() if line.get_label().startswith("base model")]
        assert list(base.get_ydata()) == [10.0, 10.0] and base.get_label() == "base model: 10.0 %"
        assert axis.get_xlabel() and axis.get_ylabel() == "average accuracy (%), 95 % interval"
    scatter = figures[1].axes[0]
    assert {text.get_text() for text in scatter.get_legend().get_texts()} >= {"lora", "placement attn",
                                                                             "placement mlp"}


# --- pre-registered hypotheses: confirmatory, Holm over them alone -------------------------------------------

def test_hypotheses_are_confirmatory_and_holm_adjusted_over_themselves_alone(study):
    records = load_study_records(study)
    summary = reports.table(records)
    hypotheses = {"hand": [
        {"name": "H1", "better": {"method": "lora", "placement": "attn"}, "worse": "base model"},
        {"name": "H2", "better": {"method": "series"}, "worse": {"method": "lora", "placement": "attn"},
         "scope": "gsm8k"},
        {"name": "H3", "better": {"method": "lora", "placement": "mlp"}, "worse": {"method": "series"}}]}
    found = reports.comparisons(records, summary, hypotheses)
    confirmatory, exploratory = found[:3], found[3:]
    assert [c["hypothesis"] for c in confirmatory] == ["H1", "H2", "H3"]
    # by hand (definition 3), the hypotheses' own p-values, then Holm over these three alone
    la = {"gsm8k": [bits(15, GSM), bits(17, GSM, 2)], "svamp": [bits(9, SVAMP), bits(11, SVAMP, 1)]}
    lm = {"gsm8k": [bits(10, GSM, 4), bits(12, GSM)], "svamp": [bits(8, SVAMP), bits(8, SVAMP, 3)]}
    se = {"gsm8k": [bits(11, GSM, 7), bits(13, GSM, 1)], "svamp": [bits(9, SVAMP, 2), bits(7, SVAMP, 5)]}
    base = {"gsm8k": [bits(3, GSM)], "svamp": [bits(2, SVAMP)]}
    expected = [expected_difference(la, base), expected_difference({"gsm8k": se["gsm8k"]}, {"gsm8k": la["gsm8k"]}),
                expected_difference(lm, se)]
    for c, e in zip(confirmatory, expected):
        assert (c["difference"], c["se"], c["p"]) == pytest.approx((e["difference"], e["se"], e["p"]), rel=1e-6)
    p = [e["p"] for e in expected]
    order = sorted(range(3), key=lambda i: p[i])
    holm, running = [0.0] * 3, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, p[i] * (3 - rank)))
        holm[i] = running
    assert [c["p_holm"] for c in confirmatory] == pytest.approx(holm, rel=1e-9)
    assert confirmatory[0]["verdict"] == "a beats b" and reports.hypothesis_outcome(confirmatory[0]) == "held"
    assert confirmatory[1]["difference"] < 0  # Series below LoRA attn on GSM8K, as predicted the other way round
    outcomes = {reports.hypothesis_outcome(c) for c in confirmatory[1:]}
    assert outcomes <= {"not decided", "contradicted"}
    # the rest are exploratory and adjusted among themselves, as without hypotheses
    plain = reports.comparisons(records, summary)
    assert [c["p_holm"] for c in exploratory] == pytest.approx([c["p_holm"] for c in plain])
    assert all(c["exploratory"] for c in exploratory)
    assert "Exploratory: not a pre-registered hypothesis." in reports.sentence(
        next(c for c in exploratory if not c["chosen"]))
    assert reports.sentence(confirmatory[0]).startswith(
        "H1 (pre-registered: method=lora,placement=attn better than base model, average): held. ")


def test_hypotheses_in_a_spec_must_pick_one_configuration_each():
    spec = {"name": "s", "base_model": "tiny-llama", "data": {"builder": "synthetic-arithmetic", "n": 8},
            "finetune": {"max_steps": 1}, "evaluate": {"tasks": ["gsm8k", "boolq"], "limit": 2},
            "grid": {"method": ["lora", "series"], "placement": ["attn", "mlp"], "seed": [1]}}
    good = build_study({**spec, "hypotheses": [{"better": {"method": "lora", "placement": "mlp"},
                                                 "worse": "base model", "scope": "boolq"}]})
    assert good.hypotheses and all(len(run.id) for run in expand(good))
    assert [r.id for r in expand(good)] == [r.id for r in expand(build_study(spec))]  # no run id changes
    for hypotheses, message in (
            ([{"better": {"method": "lora"}, "worse": "base model"}], r"hypotheses\[1\]\.better \{'method': 'lora'\} "
                                                                       r"does not pick exactly one configuration"),
            ([{"better": {"method": "lora", "placement": "mlp"}}], r"hypotheses\[1\]\.worse is required"),
            ([{"better": {"method": "lora", "placement": "mlp"}, "worse": "base model", "scope": "piqa"}],
             r"hypotheses\[1\]\.scope 'piqa' is not 'average' or one of the study's tasks"),
            ([{"better": "base model", "worse": {"method": "series", "placement": "attn"}, "why": 1}],
             r"hypotheses\[1\]\.why: unknown")):
        with pytest.raises(ValueError, match=message):
            build_study({**spec, "hypotheses": hypotheses})


def test_folders_of_one_name_with_other_settings_are_two_studies_and_shards_of_one_pool(tmp_path):
    runs = [("base", {}, None, {"gsm8k": bits(3, GSM)}, 0.0, True),
            ("la1", {"method": "lora", "seed": 1}, 1, {"gsm8k": bits(15, GSM)})]
    first = hand_store(tmp_path, runs, name="rq1")
    second = tmp_path / "rq1-qwen"
    second.mkdir()
    (second / store.STUDY_FILE).write_text(json.dumps({"name": "rq1", "spec": {"name": "rq1", "grid": {}},
                                                       "fixed": {"base_model": {"name": "another"}}}))
    write_run(second, "base2", {}, None, {"gsm8k": bits(20, GSM)}, 0.0, True, study="rq1")
    records = load_study_records([first, second])
    assert {r["configuration"] for r in records if r["baseline"]} == {"rq1 (rq1): base model",
                                                                      "rq1 (rq1-qwen): base model"}
    summary = reports.table(records)
    assert [r["cells"]["gsm8k"]["n_seeds"] for k, r in summary["rows"].items() if r["baseline"]] == [1, 1]
    shard = tmp_path / "shard"  # the same study (same fixed part), other seeds: pooled as one
    shard.mkdir()
    (shard / store.STUDY_FILE).write_text((first / store.STUDY_FILE).read_text())
    write_run(shard, "la2", {"method": "lora", "seed": 2}, 2, {"gsm8k": bits(17, GSM)}, study="rq1")
    pooled = reports.table(load_study_records([first, shard]))
    assert pooled["rows"]["method=lora"]["cells"]["gsm8k"]["n_seeds"] == 2


def test_an_untested_hypothesis_stays_in_the_holm_family(study):
    records = load_study_records(study)
    summary = reports.table(records)
    hypotheses = {"hand": [{"name": "H1", "better": {"method": "lora", "placement": "attn"}, "worse": "base model"},
                           {"name": "H2", "better": {"method": "dora"}, "worse": "base model"}]}  # never ran
    h1, h2 = reports.comparisons(records, summary, hypotheses)[:2]
    assert h2["p"] is None and reports.hypothesis_outcome(h2) == "not tested"
    assert h1["p_holm"] == pytest.approx(min(1.0, 2 * h1["p"]))  # m = 2: the one that did not run counts


def test_hypotheses_name_no_seed_and_two_configurations_and_read_numbers_written_as_yaml_strings(tmp_path):
    spec = {"name": "s", "base_model": "tiny-llama", "data": {"builder": "synthetic-arithmetic", "n": 8},
            "finetune": {"max_steps": 1}, "evaluate": {"tasks": ["gsm8k"], "limit": 2},
            "grid": {"method": ["lora"], "learning_rate": [3.0e-4, 1.0e-3], "seed": [1, 2]}}
    ok = build_study({**spec, "hypotheses": [{"better": {"method": "lora", "learning_rate": "1e-3"},
                                              "worse": {"learning_rate": 0.0003}}]})
    assert len(ok.hypotheses) == 1
    for hypotheses, message in (
            ([{"better": {"learning_rate": 1e-3, "seed": 1}, "worse": "base model"}], "names a seed"),
            ([{"better": {"learning_rate": 1e-3}, "worse": {"method": "lora", "learning_rate": 0.001}}],
             "better and worse pick the same configuration"),
            ({"better": {"learning_rate": 1e-3}, "worse": "base model"}, "hypotheses must be a list")):
        with pytest.raises(ValueError, match=message):
            build_study({**spec, "hypotheses": hypotheses})


def test_registered_hypotheses_cannot_change_once_results_exist(tmp_path):
    spec = {"name": "s", "base_model": "tiny-llama", "data": {"builder": "synthetic-arithmetic", "n": 8},
            "finetune": {"max_steps": 1}, "evaluate": {"tasks": ["gsm8k"], "limit": 2},
            "grid": {"method": ["lora", "series"], "seed": [1]},
            "hypotheses": [{"better": {"method": "lora"}, "worse": {"method": "series"}}]}
    store.open_store(tmp_path, build_study(spec))
    turned = {**spec, "hypotheses": [{"better": {"method": "series"}, "worse": {"method": "lora"}}]}
    store.open_store(tmp_path, build_study(turned))  # no result yet: still being written
    store.open_store(tmp_path, build_study(spec))
    write_run(tmp_path, "lora-s1", {"method": "lora", "seed": 1}, 1, {"gsm8k": bits(3, GSM)}, study="s")
    with pytest.raises(ValueError, match="a pre-registered hypothesis cannot change once results exist"):
        store.open_store(tmp_path, build_study(turned))
    store.open_store(tmp_path, build_study(spec))  # the same hypotheses: fine


def test_report_md_and_html_both_show_the_hypotheses_table(study, tmp_path):
    spec_file = study / store.STUDY_FILE
    saved = json.loads(spec_file.read_text())
    saved["spec"]["hypotheses"] = [{"name": "H1", "better": {"method": "lora", "placement": "attn"},
                                    "worse": "base model"}]
    spec_file.write_text(json.dumps(saved))
    result = reports.write_report([study], tmp_path / "report")
    h1 = next(c for c in result["comparisons"] if c.get("hypothesis") == "H1")
    row = reports.hypotheses_view([h1])[1][0]
    assert row[0] == "H1" and row[-1] == reports.hypothesis_outcome(h1)
    markdown = result["markdown"]
    assert "## Pre-registered hypotheses" in markdown and "| " + " | ".join(row) + " |" in markdown
    parser = _Links()
    parser.feed((Path(result["folder"]) / "report.html").read_text())
    assert "Pre-registered hypotheses" in parser.headings
    assert all(cell in parser.cells for cell in row)  # every cell of the hypothesis' row is in the page
    specs = json.loads((Path(result["folder"]) / "specs.json").read_text(encoding="utf-8"))  # the spec it ran with, beside records
    assert specs == {saved["name"]: saved["spec"]} and specs[saved["name"]]["hypotheses"][0]["name"] == "H1"
