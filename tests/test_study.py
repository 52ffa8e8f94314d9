"""Studies on tiny models: expansion and stable ids, shards, a kill and a restart, refused and grown specs, failed
runs, and the report's numbers against independent computations on a hand-made store."""
from __future__ import annotations

import json
import math
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from llm_adapters.cli import main
from llm_adapters.errors import UserError
from llm_adapters.study import build_study, expand, load_study, load_study_records, plan, run_study, shard
from llm_adapters.study import report as reports
from llm_adapters.study import store
from llm_adapters.study.runner import detectable
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


def test_plan_prints_the_minimum_detectable_differences_from_the_specs_assumptions(tmp_path, capsys):
    power = {"accuracy": {"gsm8k": 0.3, "boolq": 0.6}, "seed_sd": 0.05, "correlation": 0.25}
    spec = _write(tmp_path / "study.yaml", _spec(evaluate={**_spec()["evaluate"], "limit": 50}, power=power))
    capsys.readouterr()
    assert main(["study", "plan", str(spec), "--no-calibrate"]) == 0
    text = capsys.readouterr().out
    # 2 seeds per configuration, 50 questions each: (z_0.975 + z_0.80) x SE, written out.
    z = 1.959964 + 0.841621
    v_q = {"gsm8k": 2 * 0.3 * 0.7 * 0.75 / 50, "boolq": 2 * 0.6 * 0.4 * 0.75 / 50}
    between = [z * math.sqrt(v + 2 * 0.05 ** 2 / 2) for v in v_q.values()]
    between.append(z * math.sqrt(sum(v_q.values()) / 4 + 2 * 0.05 ** 2 / 2))
    base = [z * math.sqrt(v + 0.05 ** 2 / 2) for v in v_q.values()]
    base.append(z * math.sqrt(sum(v_q.values()) / 4 + 0.05 ** 2 / 2))
    assert re.search(r"between two +" + r" +".join(f"{100 * v:.1f}" for v in between) + "\n", text), text
    assert re.search(r"vs the base +" + r" +".join(f"{100 * v:.1f}" for v in base) + "\n", text), text
    assert "for 2 seed(s) per configuration" in text and "seed sd 5.0 points" in text
    assert "accuracy p_t gsm8k 30 %, boolq 60 %" in text and "rho of two configurations' per-question outcomes 0.25" \
        in text


def test_study_spec_baseline_and_power_problems_are_named():
    with pytest.raises(UserError) as error:
        build_study(_spec(baseline="yes", power={"accuracy": 1.5, "seed_sd": -1, "correlation": 2, "alpha": 0.1}))
    message = str(error.value)
    for part in ("baseline must be true or false, got 'yes'", "power.alpha: unknown; accepted: accuracy, seed_sd, "
                 "correlation", "power.accuracy must be a number in (0, 1)", "power.seed_sd must be a number >= 0",
                 "power.correlation must be a number in [-1, 1], got 2"):
        assert part in message
    with pytest.raises(UserError, match=r"power.accuracy.gsm8k must be a number in \(0, 1\)"):
        build_study(_spec(power={"accuracy": {"gsm8k": 0}}))


# --- running ---------------------------------------------------------------------------------------------------

def _records(out: Path) -> list[tuple[str, str]]:
    return [(r["run_id"], r["task"]) for r in load_study_records(out)]


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
    outcomes = {(r["run_id"], r["task"]): r["outcomes"] for r in load_study_records(straight)}
    assert {(r["run_id"], r["task"]): r["outcomes"] for r in load_study_records(out)} == outcomes


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


def test_study_report_json_prints_one_record_per_run_and_task_with_each_questions_outcome(tmp_path, capsys):
    out = tmp_path / "out"
    run_study(build_study(_spec(grid={"method": ["lora"], "placement": ["attn"], "seed": [1, 2]}, exclude=[])), out,
              progress=False)
    capsys.readouterr()
    assert main(["study", "report", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 6 and {"run_id", "task", "accuracy", "n", "method", "placement", "seed", "configuration",
                               "outcomes"} <= set(rows[0])
    assert [r["configuration"] for r in rows[::2]] == ["base model", "method=lora,placement=attn",
                                                      "method=lora,placement=attn"]
    for row in rows:  # each question's outcome, as the run's predictions file has it
        (folder,) = [f for f in store.runs_dir(out).iterdir() if f.name.endswith(row["run_id"])]
        lines = (folder / "eval" / row["task"] / "predictions.jsonl").read_text().splitlines()
        key = "correct" if '"correct"' in lines[0] else "loglik_correct"
        assert row["outcomes"] == {str(r["index"]): r[key] for r in map(json.loads, lines)}
        assert sum(row["outcomes"].values()) == row["correct"]
    assert main(["study", "report", str(out)]) == 0
    for name in ("rq1-placement.png", "table.csv", "comparisons.csv", "records.json", "report.html", "report.md"):
        assert (out / "report" / name).exists(), name


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
        alone, study = ([json.loads(line) for line in (where / task / "predictions.jsonl").read_text().splitlines()]
                        for where in (tmp_path / "alone", folder / "eval"))
        metric = json.loads((tmp_path / "alone" / task / "summary.json").read_text())["metric"]
        key = "correct" if metric == "generate" else "loglik_correct"
        assert [(r["index"], r["prompt"], r.get("generation")) for r in study] == \
            [(r["index"], r["prompt"], r.get("generation")) for r in alone]
        assert base["tasks"][task]["outcomes"] == [bool(r[key]) for r in sorted(alone, key=lambda r: r["index"])]
    assert run_study(build_study(spec), out, progress=False) == {"done": 0, "failed": 0, "skipped": 2}


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
    assert rows[0]["method"] == "base" and rows[0]["percent"] == 0  # the baseline run, on by default
    assert all(0 < row["percent"] < 100 for row in rows[1:])
    found = detectable(study)
    assert found is not None and all(0 < v < 1 for v in found["between"].values())


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
    on_ray, here = ({(r["name"], r["task"]): r["outcomes"] for r in load_study_records(tmp_path / d)}
                    for d in ("ray", "local"))
    assert on_ray == here and len(here) == 4
    events = [e["event"] for e in store.read_index(tmp_path / "ray")]
    assert events.count("done") == 2 and events.count("started") == 2


# --- Ray: resources, a worker that dies ---------------------------------------------------------------------

def test_ray_resources_ask_for_a_gpu_where_the_cluster_has_them_and_the_spec_is_silent():
    from llm_adapters.study.runner import ray_resources

    assert ray_resources({}, {"CPU": 64, "GPU": 8}) == {"num_cpus": 1, "num_gpus": 1}
    assert ray_resources({}, {"CPU": 64}) == {"num_cpus": 1, "num_gpus": 0}
    assert ray_resources({"gpus": 0, "cpus": 4}, {"GPU": 8}) == {"num_cpus": 4, "num_gpus": 0}
    assert ray_resources({"gpus": 0.5}, {"GPU": 8}) == {"num_cpus": 1, "num_gpus": 0.5}


@pytest.mark.parametrize("resources, message", [
    ({"gpu": 1}, "resources.gpu: unknown; accepted: cpus, gpus"),
    ({"gpus": "one"}, "resources.gpus must be a number >= 0, got 'one'"),
    ({"cpus": 0}, "resources.cpus must be a number > 0, got 0"),
    ({"gpus": 2}, "resources.gpus 2: a study run is one process on one GPU, so more would sit idle; accepted: 0 to 1"),
    ([1], "resources must be a mapping such as {gpus: 1, cpus: 8}, got [1]"),
])
def test_bad_resources_are_one_line_naming_the_key(resources, message):
    with pytest.raises(UserError, match=re.escape(message)):
        build_study(_spec(resources=resources))


def test_a_ray_worker_killed_inside_a_run_is_that_runs_failure_and_the_study_goes_on(tmp_path, monkeypatch):
    import ray

    from llm_adapters.study import runner

    spec = _spec(grid={"method": ["lora"], "placement": ["attn", "mlp"], "seed": [1]}, exclude=[], baseline=False,
                 resources={"cpus": 1})
    study = build_study(spec)
    doomed = expand(study)[0].name
    real = runner._execute_in_worker

    def killed_in_one_run(study, run, out, data, progress):  # pickled by value: runs in the worker
        if run.name == doomed:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        return real(study, run, out, data, progress)

    monkeypatch.setattr(runner, "_execute_in_worker", killed_in_one_run)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        counts = run_study(study, tmp_path / "s", executor="ray", progress=False)
    finally:
        ray.shutdown()
    assert counts == {"done": 1, "failed": 1, "skipped": 0}
    failed = json.loads((store.run_folder(tmp_path / "s", expand(study)[0]) / store.FAILED).read_text())
    assert failed["error"].startswith("the Ray task died: ") and failed["name"] == doomed
    assert [r["name"] for r in store.failures(tmp_path / "s")] == [doomed]
    assert store.status(store.run_folder(tmp_path / "s", expand(study)[1])) == "done"


# --- leases: a run alive on another host is left alone, a stale one is taken over ---------------------------

def _lease(folder: Path, host: str, age: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / store.RUNNING).write_text(json.dumps({"host": host, "pid": 1, "owner": "elsewhere",
                                                    "renewed": time.time() - age}))


def test_a_run_whose_lease_another_host_renews_is_skipped_and_a_stale_one_is_redone(tmp_path):
    spec = _spec(grid={"method": ["lora"], "placement": ["attn", "mlp"], "seed": [1]}, exclude=[], baseline=False)
    study = build_study(spec)
    fresh_run, stale_run = expand(study)
    store.open_store(tmp_path, study)
    _lease(store.run_folder(tmp_path, fresh_run), "node-7", age=5)  # renewed 5 s ago on another machine
    _lease(store.run_folder(tmp_path, stale_run), "node-7", age=store.STALE + 60)  # that machine was lost
    assert store.status(store.run_folder(tmp_path, fresh_run)) == "running"
    assert store.status(store.run_folder(tmp_path, stale_run)) == "interrupted"
    counts = run_study(study, tmp_path, progress=False)
    assert counts == {"done": 1, "failed": 0, "skipped": 1}
    assert store.status(store.run_folder(tmp_path, stale_run)) == "done"
    assert not (store.run_folder(tmp_path, stale_run) / store.RUNNING).exists()  # released
    assert json.loads((store.run_folder(tmp_path, fresh_run) / store.RUNNING).read_text())["host"] == "node-7"


def test_a_held_lease_is_renewed_while_the_run_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RENEW", 0.05)
    lease = store.Lease(tmp_path / "run")
    assert lease.claim()
    first = json.loads((tmp_path / "run" / store.RUNNING).read_text())["renewed"]
    time.sleep(0.5)
    assert json.loads((tmp_path / "run" / store.RUNNING).read_text())["renewed"] > first
    assert not store.Lease(tmp_path / "run").claim()  # fresh: another driver keeps off
    lease.release()
    assert not (tmp_path / "run" / store.RUNNING).exists()


def test_a_renewal_that_fails_with_an_io_error_is_retried_and_the_lease_stays_held(tmp_path, monkeypatch, capsys):
    # One ESTALE from a shared file system killed the renewal thread: the lease went stale under a live run.
    import errno

    monkeypatch.setattr(store, "RENEW", 0.05)
    monkeypatch.setattr(store, "STALE", 1.0)
    write, failures = store.write_json_atomic, []

    def fails_once(path, obj):
        if not failures:
            failures.append(path)
            raise OSError(errno.ESTALE, "Stale file handle")
        write(path, obj)

    monkeypatch.setattr(store, "write_json_atomic", fails_once)
    lease = store.Lease(tmp_path / "run")
    assert lease.claim()
    time.sleep(1.5)  # longer than STALE: only renewals after the failed one keep the lease fresh
    assert failures
    assert time.time() - json.loads((tmp_path / "run" / store.RUNNING).read_text())["renewed"] < 0.5
    assert lease.held() and store.status(tmp_path / "run") == "running"
    lines = [line for line in capsys.readouterr().err.splitlines() if "could not renew the lease" in line]
    assert len(lines) == 1 and "Stale file handle" in lines[0]
    lease.release()


def test_a_lease_no_longer_renewed_for_the_stale_age_is_not_held(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "RENEW", 0.05)
    monkeypatch.setattr(store, "STALE", 0.3)

    def fails(path, obj):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "write_json_atomic", fails)
    lease = store.Lease(tmp_path / "run")
    assert lease.claim() and lease.held()
    time.sleep(0.5)
    assert not lease.held()  # the file is still its own, but another driver may take the run now
    lease.release()


def test_a_driver_whose_run_was_taken_over_does_not_write_its_result(tmp_path, monkeypatch, capsys):
    # The driver stalled past the stale age; another took the run over and finished it first. Its result stands.
    from llm_adapters.study import runner

    study = build_study(_spec(grid={"method": ["lora"], "placement": ["mlp"], "seed": [1]}, exclude=[],
                              baseline=False))
    (run,) = expand(study)
    folder = store.run_folder(tmp_path, run)
    theirs = {"id": run.id, "by": "the other driver"}

    def taken_over_while_training(study, run, folder, data, progress):
        _lease(folder, "node-7", age=0)
        (folder / store.RESULT).write_text(json.dumps(theirs))
        return {"id": run.id, "by": "this driver"}

    monkeypatch.setattr(runner, "_finetune_and_evaluate", taken_over_while_training)
    assert runner.execute(study, run, tmp_path, tmp_path / "data.json", progress=False) is None
    assert json.loads((folder / store.RESULT).read_text()) == theirs
    assert [e["event"] for e in store.read_index(tmp_path)] == ["started"]
    assert json.loads((folder / store.RUNNING).read_text())["owner"] == "elsewhere"  # its lease left alone
    assert "lost its lease" in capsys.readouterr().out

    (folder / store.RESULT).unlink()  # taken over and still running there: this driver's failure is not written

    def taken_over_and_failed(study, run, folder, data, progress):
        _lease(folder, "node-7", age=0)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "_finetune_and_evaluate", taken_over_and_failed)
    (folder / store.RUNNING).unlink()
    assert runner.execute(study, run, tmp_path, tmp_path / "data.json", progress=False) is None
    assert not (folder / store.FAILED).exists() and not (folder / store.RESULT).exists()
    assert store.status(folder) == "running"


def test_two_drivers_started_at_once_on_one_store_train_each_run_once(tmp_path):
    spec = _write(tmp_path / "spec.yaml", _spec(grid={"method": ["lora", "series"], "placement": ["mlp"],
                                                     "seed": [1, 2]}, exclude=[]))
    command = [sys.executable, "-m", "llm_adapters", "study", "run", str(spec), "--out", str(tmp_path / "s"),
               "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    drivers = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [driver.communicate(timeout=900) for driver in drivers]
    assert all(d.returncode == 0 for d in drivers), [o[1][-2000:] for o in outputs]
    events = store.read_index(tmp_path / "s")
    runs = expand(load_study(spec))
    for run in runs:
        assert [e["event"] for e in events if e["id"] == run.id] == ["started", "done"], run.name
        assert store.status(store.run_folder(tmp_path / "s", run)) == "done"
    met = [out.count("running elsewhere") + out.count("finished by another driver") for out, _ in outputs]
    assert sum(met) >= 1  # the drivers met on at least one run
