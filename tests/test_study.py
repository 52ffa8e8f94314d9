"""Studies on tiny models: expansion and stable ids, shards, a kill and a restart, refused and grown specs, failed
runs, and the report's numbers against independent computations on a hand-made store."""
from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_adapters.cli import main
from llm_adapters.errors import UserError
from llm_adapters.study import build_study, expand, load_study, plan, run_study, shard
from llm_adapters.study import report as reports
from llm_adapters.study import store
from shared_data import LLM_ADAPTERS_DATA

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.shared_data, pytest.mark.usefixtures("one_torch_thread")]


def _spec(**changes: Any) -> dict[str, Any]:
    spec = {
        "name": "tiny-study", "base_model": "tiny-llama",
        "data": {"builder": "synthetic-arithmetic", "n": 8, "seed": 0},
        "finetune": {"max_steps": 1, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 0,
                     "learning_rate": 1.0e-2, "template": "alpaca"},
        "evaluate": {"tasks": ["gsm8k", "boolq"], "limit": 2, "max_new_tokens": 4, "data_dir": str(LLM_ADAPTERS_DATA)},
        "grid": {"method": ["lora", "series"], "placement": ["attn", "mlp"], "seed": [1, 2]},
        "overrides": {"lora": {"r": 4}, "series": {"bottleneck_size": 8}},
        "exclude": [{"method": "series", "placement": "attn"}],
    }
    spec.update(changes)
    return spec


def _write(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


# --- the spec ------------------------------------------------------------------------------------------------

def test_expand_gives_the_baseline_then_the_grid_without_exclusions_with_readable_names_and_stable_ids():
    runs = expand(build_study(_spec()))
    assert [r.name for r in runs] == ["base", "lora-attn-s1", "lora-attn-s2", "lora-mlp-s1", "lora-mlp-s2",
                                      "series-mlp-s1", "series-mlp-s2"]
    assert [r.id for r in runs] == [r.id for r in expand(build_study(_spec()))]  # stable
    assert len({r.id for r in runs}) == 7 and all(len(r.id) == 10 for r in runs)
    base, runs = runs[0], runs[1:]
    assert base.is_baseline and base.spec is None and base.evaluate["template"] == "alpaca"  # finetune's template
    assert [r.name for r in expand(build_study(_spec(baseline=False)))] == [r.name for r in runs]
    # The baseline's id depends on the evaluation settings, not on the fine-tuning ones.
    relearnt = expand(build_study(_spec(finetune={**_spec()["finetune"], "learning_rate": 2e-2})))[0]
    reevaluated = expand(build_study(_spec(evaluate={**_spec()["evaluate"], "limit": 3})))[0]
    assert relearnt.id == base.id != reevaluated.id
    lora = runs[0]
    assert (lora.spec.r, lora.spec.placement, lora.finetune["seed"]) == (4, "attn", 1)
    assert runs[4].spec.bottleneck_size == 8
    # An id depends on what decides the result: another learning rate is another run ...
    other = expand(build_study(_spec(finetune={**_spec()["finetune"], "learning_rate": 2e-2})))
    assert not {r.id for r in other} & {r.id for r in runs}
    # ... a field the method does not use is not, nor is the placement spelled as its default.
    grid = {"method": ["lora"], "placement": ["default", "attn+mlp"], "bottleneck_size": [8, 16], "seed": [1]}
    merged = expand(build_study(_spec(grid=grid, exclude=[], baseline=False)))
    assert len(merged) == 1


def test_study_spec_problems_are_reported_at_once_and_by_run():
    with pytest.raises(UserError) as error:
        build_study(_spec(grid={"method": ["lora"], "colour": ["red"]}, finetune={"learnin_rate": 1}, epochs=3))
    message = str(error.value)
    for part in ("unknown key 'epochs'", "finetune.learnin_rate: not a field here", "grid axis 'colour'"):
        assert part in message
    with pytest.raises(UserError, match=r"run lora-r0-s1: .*r must be a positive integer, got 0"):
        build_study(_spec(grid={"method": ["lora"], "r": [4, 0], "seed": [1]}, exclude=[]))


def test_shards_cover_every_run_exactly_once_and_keep_their_runs_when_the_grid_grows():
    runs = expand(build_study(_spec()))
    parts = [shard(runs, f"{i}/3") for i in (1, 2, 3)]
    assert sorted(r.id for part in parts for r in part) == sorted(r.id for r in runs)
    grown = expand(build_study(_spec(grid={**_spec()["grid"], "seed": [1, 2, 3]})))
    for i, part in enumerate(parts, start=1):
        assert {r.id for r in part} <= {r.id for r in shard(grown, f"{i}/3")}
    with pytest.raises(UserError, match=r"--shard '4/3': give i/n with 1 <= i <= n"):
        shard(runs, "4/3")


def test_plan_counts_parameters_on_the_meta_device_and_the_cost():
    rows = plan(build_study(_spec()), calibrate=False)
    assert [row["name"] for row in rows][:3] == ["base", "lora-attn-s1", "lora-attn-s2"]
    assert (rows[0]["trainable"], rows[0]["percent"], rows[0]["train_tokens"]) == (0, 0.0, 0)
    lora_attn = rows[1]
    # tiny-llama: 2 layers, q (64->64), k and v (64->32) with r = 4: 2 * 4 * ((64+64) + 2 * (64+32)) = 2560
    assert lora_attn["trainable"] == 2560
    assert {"id", "name", "method", "placement", "seed", "percent"} <= set(lora_attn)
    assert lora_attn["questions"] == 4 and lora_attn["train_tokens"] > 0


# --- running ---------------------------------------------------------------------------------------------------

def _records(out: Path) -> list[tuple[str, str]]:
    return [(r["run_id"], r["task"]) for r in reports.records(store.results(out))]


def test_study_run_is_resumable_after_kill_9_without_duplicates(tmp_path):
    spec = _write(tmp_path / "study.yaml", _spec())
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "llm_adapters", "study", "run", str(spec), "--out", str(out),
                                "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while not list(store.runs_dir(out).glob(f"*/{store.RESULT}")):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no run finished within 3 minutes"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = len(store.results(out))
    assert 1 <= finished < 7, "killed mid-study"
    counts = run_study(load_study(spec), out, progress=False)
    assert counts["skipped"] == finished and counts["done"] == 7 - finished
    records = _records(out)
    assert len(records) == len(set(records)) == 7 * 2  # one record per run x task, the baseline run included
    assert main(["study", "status", str(out), "--json"]) == 0
    # an uninterrupted study gives the same numbers
    straight = tmp_path / "straight"
    run_study(load_study(spec), straight, progress=False)
    accuracy = {(r["run_id"], r["task"]): r["accuracy"] for r in reports.records(store.results(straight))}
    assert {(r["run_id"], r["task"]): r["accuracy"] for r in reports.records(store.results(out))} == accuracy


def test_study_refuses_a_changed_spec_and_runs_only_the_new_runs_of_a_grown_grid(tmp_path):
    spec = _spec(grid={"method": ["lora"], "placement": ["attn"], "seed": [1]}, exclude=[], baseline=False)
    out = tmp_path / "out"
    assert run_study(build_study(spec), out, progress=False) == {"done": 1, "failed": 0, "skipped": 0}
    changed = _spec(**{**spec, "finetune": {**spec["finetune"], "learning_rate": 5e-2}})
    with pytest.raises(UserError, match=r"holds study 'tiny-study' with other settings.*"
                                        r"finetune\.learning_rate: 0\.01 -> 0\.05"):
        run_study(build_study(changed), out, progress=False)
    grown = _spec(**{**spec, "grid": {"method": ["lora"], "placement": ["attn"], "seed": [1, 2]}})
    assert run_study(build_study(grown), out, progress=False) == {"done": 1, "failed": 0, "skipped": 1}
    assert len(store.results(out)) == 2


def test_a_failed_run_is_recorded_skipped_on_rerun_and_listed_in_the_report(tmp_path, capsys):
    # cutoff_len 8 leaves no response token in any example: that run fails in fine-tuning, the other runs.
    spec = _spec(grid={"method": ["lora"], "cutoff_len": [256, 8], "seed": [1]}, exclude=[], baseline=False)
    out = tmp_path / "out"
    assert run_study(build_study(spec), out, progress=False) == {"done": 1, "failed": 1, "skipped": 0}
    (failure,) = store.failures(out)
    assert failure["name"] == "lora-cutoff_len8-s1" and "raise cutoff_len" in failure["error"]
    assert run_study(build_study(spec), out, progress=False) == {"done": 0, "failed": 0, "skipped": 2}
    text = reports.write_report([out])["markdown"]
    assert "## Failed runs" in text and "lora-cutoff_len8-s1" in text
    assert run_study(build_study(spec), out, retry_failed=True, progress=False)["failed"] == 1


def test_study_report_json_prints_one_record_per_run_and_task_with_grid_values(tmp_path, capsys):
    out = tmp_path / "out"
    run_study(build_study(_spec(grid={"method": ["lora"], "placement": ["attn"], "seed": [1, 2]}, exclude=[])), out,
              progress=False)
    capsys.readouterr()
    assert main(["study", "report", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4 and {"run_id", "task", "accuracy", "n", "method", "placement", "seed"} <= set(rows[0])
    assert main(["study", "report", str(out)]) == 0
    assert (out / "report" / "rq1-placement.png").exists() and (out / "report" / "table.csv").exists()


def test_the_baseline_run_is_the_base_model_evaluated_alone_with_the_study_settings(tmp_path):
    spec = _spec(grid={"method": ["lora"], "placement": ["attn"], "seed": [1]}, exclude=[])
    out = tmp_path / "out"
    assert run_study(build_study(spec), out, progress=False) == {"done": 2, "failed": 0, "skipped": 0}
    (base,) = [r for r in store.results(out) if r.get("baseline")]
    assert (base["name"], base["values"], base["seed"], base["parameters"]["trainable"]) == ("base", {}, None, 0)
    # The same base model through `llm-adapters evaluate`, with the settings the study's adapters are evaluated
    # with (the template they were trained with): the same generations and outcomes, question by question.
    assert main(["evaluate", "--base-model", "tiny-llama", "--tasks", "gsm8k,boolq", "--limit", "2",
                 "--max-new-tokens", "4", "--template", "alpaca", "--data-dir", str(LLM_ADAPTERS_DATA),
                 "--output-dir", str(tmp_path / "alone"), "--no-progress"]) == 0
    (folder,) = [f for f in store.runs_dir(out).iterdir() if f.name.startswith("base-")]
    for task in ("gsm8k", "boolq"):
        alone = [json.loads(line) for line in (tmp_path / "alone" / task / "predictions.jsonl").read_text().splitlines()]
        study = [json.loads(line) for line in (folder / "eval" / task / "predictions.jsonl").read_text().splitlines()]
        metric = json.loads((tmp_path / "alone" / task / "summary.json").read_text())["metric"]
        key = "correct" if metric == "generate" else "loglik_correct"
        assert [(r["index"], r["prompt"], r.get("generation")) for r in study] == \
            [(r["index"], r["prompt"], r.get("generation")) for r in alone]
        assert base["tasks"][task]["outcomes"] == [bool(r[key]) for r in sorted(alone, key=lambda r: r["index"])]
    assert run_study(build_study(spec), out, progress=False) == {"done": 0, "failed": 0, "skipped": 2}


# --- the report's numbers, on a hand-made store ------------------------------------------------------------------

def _result(folder: Path, name: str, method: str, placement: str, seed: int, tasks: dict[str, list[bool]],
            percent: float) -> None:
    folder.mkdir(parents=True)
    (folder / store.RESULT).write_text(json.dumps({
        "id": f"{name}{seed}", "name": f"{name}-s{seed}", "study": "hand", "base_model": "tiny-llama",
        "values": {"method": method, "placement": placement, "seed": seed}, "method": method, "placement": placement,
        "seed": seed, "parameters": {"percent": percent},
        "tasks": {t: {"accuracy": sum(o) / len(o), "n": len(o), "correct": sum(o), "group": "math", "outcomes": o}
                  for t, o in tasks.items()}}))


@pytest.fixture
def hand_made(tmp_path) -> Path:
    """Two configurations x three seeds, two tasks of 10 questions each, with outcomes chosen by hand."""
    out = tmp_path / "hand"
    out.mkdir()
    (out / store.STUDY_FILE).write_text(json.dumps({"name": "hand", "spec": {"name": "hand"}, "fixed": {}}))
    a = {1: [7, 5], 2: [8, 6], 3: [6, 4]}  # correct answers out of 10, per seed, per task
    b = {1: [4, 5], 2: [5, 3], 3: [3, 4]}
    for name, counts, percent in (("lora-attn", a, 0.5), ("series-mlp", b, 0.2)):
        method, placement = name.split("-")
        for seed, (x, y) in counts.items():
            _result(out / "runs" / f"{name}-{seed}", name, method, placement, seed,
                    {"gsm8k": [True] * x + [False] * (10 - x), "svamp": [True] * y + [False] * (10 - y)}, percent)
    return out


def test_report_means_deviations_and_intervals_match_an_independent_computation(hand_made):
    results, _, _ = reports.load([hand_made])
    rows = reports.table(results)["rows"]
    cell = rows["lora-attn"]["cells"]["gsm8k"]
    values = [0.7, 0.8, 0.6]
    assert cell["mean"] == pytest.approx(statistics.mean(values))
    assert cell["sd"] == pytest.approx(statistics.stdev(values))
    half = 4.303 * statistics.stdev(values) / math.sqrt(3)  # t(0.975, 2 df) from a printed t table
    assert cell["ci95_seeds"] == pytest.approx([0.7 - half, 0.7 + half])
    # 21 of 30 answers pooled: Wilson by hand, p = .7, z² = 3.8415: centre (.7 + .06403) / 1.12805 = .67730,
    # half-width 1.95996 / 1.12805 * sqrt(.007 + .001067) = .15605 -> (.52125, .83335)
    assert cell["ci95_answers"] == pytest.approx([0.52125, 0.83335], abs=1e-4)
    assert cell["ci95"] == pytest.approx([min(0.7 - half, 0.52125), max(0.7 + half, 0.83335)], abs=1e-4)
    average = rows["lora-attn"]["cells"]["average"]  # per seed: (0.7+0.5)/2, (0.8+0.6)/2, (0.6+0.4)/2
    assert average["mean"] == pytest.approx(0.6) and average["sd"] == pytest.approx(0.1)


def test_report_paired_test_matches_an_exact_binomial_computed_by_hand(hand_made):
    results, _, _ = reports.load([hand_made])
    comparison = reports.compare(results, "lora-attn", "series-mlp")
    # Same questions, same seeds: A is right wherever B is (B's right answers are a prefix of A's), so the
    # discordant pairs are all "A only": (7-4)+(5-5)+(8-5)+(6-3)+(6-3)+(4-4) = 12, and none "B only".
    assert (comparison["a_only"], comparison["b_only"], comparison["pairs"]) == (12, 0, 60)
    assert comparison["p"] == pytest.approx(2 * 0.5 ** 12)  # two-sided: 2 * P(X <= 0), X ~ Binomial(12, 1/2)
    assert comparison["difference_points"] == pytest.approx(100 * 12 / 60)
    text = reports.sentence(comparison)
    assert text.startswith("lora-attn beats series-mlp by 20.0 points (McNemar p = 0.000")
    close = reports.mcnemar([True, False, True, False, True], [False, True, True, False, False])  # 2 vs 1
    assert close["p"] == pytest.approx(2 * (1 + 3) / 8)  # P(X <= 1), X ~ Binomial(3, 1/2) = 4/8, twice: 1.0
    assert "inside the noise" in reports.sentence({**close, "a": "x", "b": "y", "difference_points": 20.0})


# --- presets --------------------------------------------------------------------------------------------------------

STUDIES = sorted((ROOT / "configs" / "studies").glob("*.yaml"))


def test_study_presets_cover_the_paper_and_mini_versions():
    names = {p.stem for p in STUDIES}
    for question in ("rq1-placement", "rq2-hyperparams", "rq3-id-ood", "main-math", "main-commonsense"):
        assert {f"paper-{question}", f"mini-{question}"} <= names


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_preset_validates_and_plans(path, monkeypatch):
    monkeypatch.setenv("LLM_ADAPTERS_DATA", str(LLM_ADAPTERS_DATA.parent))
    assert path.read_text().splitlines()[0].startswith("# llm-adapters study run configs/studies/")
    study = load_study(path)
    runs = expand(study)
    assert runs and len({r.id for r in runs}) == len(runs)
    rows = plan(study, calibrate=False)
    assert all(0 < row["percent"] < 100 for row in rows)


def test_study_run_on_a_local_ray_instance_gives_the_local_results(tmp_path):
    import ray

    spec = _spec(grid={"method": ["lora"], "placement": ["attn", "mlp"], "seed": [1]}, exclude=[],
                 resources={"cpus": 1}, baseline=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert run_study(build_study(spec), tmp_path / "ray", executor="ray", progress=False)["done"] == 2
    finally:
        ray.shutdown()
    run_study(build_study(spec), tmp_path / "local", progress=False)
    on_ray, here = ({(r["name"], r["task"]): r["accuracy"] for r in reports.records(store.results(tmp_path / d))}
                    for d in ("ray", "local"))
    assert on_ray == here and len(here) == 4
    events = [e["event"] for e in store.read_index(tmp_path / "ray")]
    assert events.count("done") == 2 and events.count("started") == 2
