"""`study plan` and `study run`: the runs of a spec, their cost, and running them (fine-tune, then evaluate) into
the store, skipping finished ones. A failed run (an exception, a non-finite loss) is recorded with its error and
the study goes on."""
from __future__ import annotations

import dataclasses
import json
import math
import resource
import time
import traceback
from pathlib import Path
from typing import Any

from llm_adapters import config as configs
from llm_adapters.errors import UserError
from llm_adapters.files import write_json_atomic
from llm_adapters.study import store
from llm_adapters.study.spec import POWER_DEFAULTS, Run, StudySpec, expand, shard


# ------------------------------------------------------------------------------------------------ plan

def trainable_percent(study: StudySpec, run: Run) -> dict[str, float]:
    """Trainable / total parameters of the run's adapter, counted on the meta device (no weights)."""
    from llm_adapters.methods import attach, count_parameters
    from llm_adapters.models import load_meta

    spec = run.spec
    if spec.method_record.rewrites_base:  # PiSSA/OLoRA decompose real weights; their shapes are LoRA's
        spec = dataclasses.replace(spec, method="lora")
    return count_parameters(attach(load_meta(study.base_model), spec))


def plan(study: StudySpec, shard_spec: str | None = None, calibrate: bool = True) -> list[dict[str, Any]]:
    """One row per run: id, name, grid values, trainable %, training tokens, questions, and (with `calibrate`,
    where the base model loads here) an estimated time from a short measurement. The baseline run (the base
    model alone) trains nothing: 0 trainable parameters, 0 training tokens."""
    runs = shard(expand(study), shard_spec)
    notes: list[str] = []
    tokens = _training_tokens(study, notes)
    per_task = task_questions(study, notes)
    questions = sum(per_task.values()) if per_task is not None else None
    speed = _calibrate(study, notes) if calibrate and runs else None
    rows = []
    for run in runs:
        if run.is_baseline:
            counts, train_tokens = {"trainable": 0, "percent": 0.0}, 0
        else:
            counts = trainable_percent(study, run)
            epochs = float(run.finetune.get("num_epochs", 3.0))
            steps = run.finetune.get("max_steps", -1)
            train_tokens = (tokens["per_example"] * int(run.finetune.get("batch_size", 16)) * steps
                            if steps and steps > 0 else tokens["total"] * epochs) if tokens else None
        row = {"id": run.id, "name": run.name, **run.values,
               "method": "base" if run.is_baseline else run.spec.method,
               "placement": None if run.is_baseline else _placement(run),
               "seed": None if run.is_baseline else run.finetune.get("seed", 42),
               "trainable": counts["trainable"], "percent": counts["percent"],
               "train_tokens": round(train_tokens) if train_tokens is not None else None, "questions": questions}
        if speed and train_tokens is not None and questions is not None:
            row["estimated_seconds"] = round(train_tokens / speed["train_tokens_per_s"]
                                             + questions * speed["seconds_per_question"])
        rows.append(row)
    for note in notes:
        print(f"[study plan] {note}", flush=True)
    return rows


def detectable(study: StudySpec) -> dict[str, Any] | None:
    """The minimum detectable differences (80 % power, two-sided 5 %) of the comparisons the report will make,
    per task and for the average, for the planned questions and seeds under the spec's `power` assumptions
    (`statistics.minimum_detectable_difference`). None where the benchmark files are not here (no question
    counts).

    Returns:
        {"questions": {task: N_t}, "seeds": k (the fewest seeds of a configuration), "assumptions": {...},
         "between": {task: mdd, "average": mdd} (two configurations of k seeds each),
         "against_base": {...} (a configuration of k seeds against the base model; only with a baseline run)}.
    """
    from llm_adapters.study.statistics import minimum_detectable_difference

    notes: list[str] = []
    questions = task_questions(study, notes)
    if not questions:
        return None
    seeds: dict[str, int] = {}
    for run in expand(study):
        if not run.is_baseline:
            seeds[run.configuration] = seeds.get(run.configuration, 0) + 1
    k = min(seeds.values()) if seeds else 1
    assumptions = study.assumptions()
    accuracy = assumptions["accuracy"]
    accuracy = {task: accuracy.get(task, POWER_DEFAULTS["accuracy"]) if isinstance(accuracy, dict) else accuracy
                for task in questions}
    common = dict(n_questions=questions, accuracy=accuracy, seed_sd=assumptions["seed_sd"],
                  correlation=assumptions["correlation"])
    found = {"questions": questions, "seeds": k, "configurations": len(seeds),
             "assumptions": {**assumptions, "accuracy": accuracy},
             "between": minimum_detectable_difference(**common, k_a=k, k_b=k)}
    if study.baseline:
        found["against_base"] = minimum_detectable_difference(**common, k_a=k, k_b=0)
    return found


def _placement(run: Run) -> str:
    value = run.spec.resolved_placement
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _training_tokens(study: StudySpec, notes: list[str]) -> dict[str, float] | None:
    """Real tokens of one pass over the training data (prompt + response + EOS, cut at cutoff_len)."""
    from llm_adapters.models import load_tokenizer
    from llm_adapters.train.batches import encode_records, split_records
    from llm_adapters.train.config import FinetuneConfig

    try:
        records = _records(study)
        tokenizer = load_tokenizer(study.base_model)
    except Exception as error:  # no data or tokenizer here (a 7B spec on a laptop): the plan says so
        notes.append(f"training tokens unknown: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
    settings = {**defaults, **study.finetune}
    train, _ = split_records(records, settings["val_set_size"], settings["seed"], settings["max_examples"])
    examples, stats = encode_records(train, tokenizer, template=settings["template"],
                                     cutoff_len=settings["cutoff_len"], train_on_inputs=settings["train_on_inputs"])
    return {"total": stats.tokens, "per_example": stats.tokens / max(1, len(examples))}


def _records(study: StudySpec) -> list[dict[str, Any]]:
    from llm_adapters.data.builders import BUILDERS
    from llm_adapters.data.io import read_records

    if isinstance(study.data, dict):
        builder = BUILDERS[study.data["builder"]]
        options = configs.build(builder.options, {k: v for k, v in study.data.items() if k != "builder"})
        return builder.build(options).records
    return read_records(study.data_path(), ("instruction", "output"))


def task_questions(study: StudySpec, notes: list[str]) -> dict[str, int] | None:
    """The questions each task will ask (its file's records, cut at `limit`); None (with a note) where the
    benchmark files are not here."""
    from llm_adapters.eval import EvalConfig, prepare_tasks

    config = configs.build(EvalConfig, study.evaluate, label="study evaluate")
    try:
        prepared = prepare_tasks(dataclasses.replace(config, skip_missing=True))
    except Exception as error:  # no benchmark files here: the plan says so
        notes.append(f"questions unknown: {type(error).__name__}: {str(error).splitlines()[0]}")
        return None
    return {d.task.name: min(len(d.records), config.limit or len(d.records)) for d in prepared.data}


def _calibrate(study: StudySpec, notes: list[str]) -> dict[str, float] | None:
    """A short measurement on this machine: training tokens/s of one LoRA step, seconds per question of one
    batch of generation. An estimate: methods, prompt lengths and answers differ."""
    import torch

    from llm_adapters.eval import DecodeConfig, generate_batch
    from llm_adapters.data.tasks import TASKS
    from llm_adapters.methods import attach
    from llm_adapters.models import load_model

    try:
        model, tokenizer = load_model(study.base_model)
    except Exception as error:  # a model that cannot load here: no time estimate
        notes.append(f"no time estimate: the base model does not load here ({type(error).__name__})")
        return None
    text = "Below is an instruction. " * 8
    batch = tokenizer([text] * 4, return_tensors="pt").to(next(model.parameters()).device)  # a micro-batch
    peft_model = attach(model, {"method": "lora", "r": 8})
    peft_model.train()
    start = time.perf_counter()
    peft_model(**batch, labels=batch["input_ids"]).loss.backward()
    train_tps = batch["input_ids"].numel() / (time.perf_counter() - start)
    peft_model.eval()
    budget = int(study.evaluate.get("max_new_tokens") or 64)
    start = time.perf_counter()
    with torch.no_grad():
        generate_batch(peft_model, tokenizer, [text] * 16, TASKS["gsm8k"], DecodeConfig(max_new_tokens=8,
                                                                                        stop_rules=False))
    per_token = (time.perf_counter() - start) / (16 * 8)
    # Half the budget on average: the stop rule ends most answers early.
    return {"train_tokens_per_s": train_tps, "seconds_per_question": per_token * budget / 2}


# ------------------------------------------------------------------------------------------------ run

EXECUTORS = ("local", "ray")


def run_study(study: StudySpec, out: str | Path, shard_spec: str | None = None, retry_failed: bool = False,
              progress: bool = True, executor: str = "local", ray_address: str | None = None) -> dict[str, int]:
    """Run every pending run of the study (or of one shard) into `out`; finished runs are skipped.

    Args:
        executor: `local` (one run after the other in this process) or `ray` (each run a Ray task with the
            spec's `resources`, on a local Ray instance or the cluster at `ray_address`; the tasks write into
            the same store, which must be on a file system they share).

    Returns:
        {"done": ..., "failed": ..., "skipped": ...} for this call.

    Raises:
        UserError: `out` holds another study, or this one with a changed key that enters the run ids; an
            unknown executor, or Ray not installed.
    """
    if executor not in EXECUTORS:
        raise UserError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    out = Path(out)
    runs = shard(expand(study), shard_spec)
    store.open_store(out, study)
    data = _training_data(study, out)
    counts = {"done": 0, "failed": 0, "skipped": 0}
    todo = []
    for number, run in enumerate(runs, start=1):
        state = store.status(store.run_folder(out, run))
        if state == "done" or (state == "failed" and not retry_failed) or state == "running":
            counts["skipped"] += 1
        else:
            todo.append((number, run))
    started, finished = time.time(), 0
    outcomes = (_local(study, todo, out, data, progress) if executor == "local"
                else _ray(study, todo, out, data, progress, ray_address))
    for number, run, ok in outcomes:
        finished += 1
        counts["skipped" if ok is None else "done" if ok else "failed"] += 1
        left = len(todo) - finished
        eta = f", ETA {_duration(left * (time.time() - started) / finished)}" if left else ""
        print(f"[study] finished {run.name} ({run.id}), {number}/{len(runs)} of the study: {finished} of "
              f"{len(todo)} this call{eta}", flush=True)
    print(f"[study] {study.name}: {counts['done']} run(s) done, {counts['failed']} failed, {counts['skipped']} "
          f"skipped (finished before, failed earlier or running elsewhere); results in {out}", flush=True)
    return counts


def _local(study: StudySpec, todo: list[tuple[int, Run]], out: Path, data: Path, progress: bool):
    for number, run in todo:
        print(f"[study] run {number} {run.name} ({run.id})", flush=True)
        yield number, run, execute(study, run, out, data, progress)


def ray_resources(resources: dict[str, Any], cluster: dict[str, float]) -> dict[str, float]:
    """What each run's Ray task asks for: the spec's `resources` (`cpus`, default 1; `gpus`), and where the spec
    sets no `gpus` and the cluster has GPUs, one GPU (Ray hides the GPUs from a task that asks for none, which
    would then train on the CPU in fp32)."""
    gpus = resources.get("gpus", 1 if cluster.get("GPU", 0) > 0 else 0)
    return {"num_cpus": resources.get("cpus", 1), "num_gpus": gpus}


def _ray(study: StudySpec, todo: list[tuple[int, Run]], out: Path, data: Path, progress: bool,
         address: str | None):
    """Each run a Ray task (`ray_resources`), yielded as they finish. A task whose worker dies (killed for
    memory, a lost node) is recorded as that run's failure with the cause, and the study goes on (no automatic
    retry: `--retry-failed` runs it again)."""
    try:
        import ray
    except ImportError as error:
        raise UserError("--executor ray needs Ray: pip install 'llm-adapters[ray]'") from error
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    resources = ray_resources(study.resources, ray.cluster_resources())
    why = " (the cluster has GPUs and the spec sets none: one a run)" if "gpus" not in study.resources and \
        resources["num_gpus"] else ""
    print(f"[study] each run a Ray task with {resources}{why}", flush=True)
    task = ray.remote(max_retries=0, **resources)(_execute_in_worker)
    pending = {task.remote(study, run, str(out), str(data), progress): (number, run) for number, run in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        number, run = pending.pop(ready[0])
        try:
            ok = ray.get(ready[0])
        except ray.exceptions.RayError as error:  # the worker died, or the task could not run at all
            cause = str(error).strip().splitlines()[0] if str(error).strip() else ""
            record_failure(out, run, f"the Ray task died: {type(error).__name__}: {cause}", str(error))
            ok = False
        yield number, run, ok


def _execute_in_worker(study: StudySpec, run: Run, out: str, data: str, progress: bool) -> bool:
    import llm_adapters  # noqa: F401  (registers the bottleneck method in the worker process)

    return execute(study, run, Path(out), Path(data), progress)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min {int(seconds % 60)} s"


def _training_data(study: StudySpec, out: Path) -> Path:
    """The training file: the spec's path, or the builder's output, built once into DIR/data/."""
    from llm_adapters.data.builders import BUILDERS
    from llm_adapters.study.spec import data_identity

    if not isinstance(study.data, dict):
        return study.data_path()
    identity = data_identity(study.data)
    tag = json.dumps(identity, sort_keys=True)
    import hashlib

    path = out / "data" / f"{study.data['builder']}-{hashlib.sha256(tag.encode()).hexdigest()[:10]}.json"
    if not path.exists():
        builder = BUILDERS[study.data["builder"]]
        options = configs.build(builder.options, {k: v for k, v in study.data.items() if k != "builder"})
        builder.build(options, path, overwrite=True)
    return path


def execute(study: StudySpec, run: Run, out: Path, data: Path, progress: bool = True) -> bool | None:
    """Fine-tune and evaluate one run into its folder (the baseline run: evaluate the base model alone); record
    its result (or its failure). True if done, False if failed, None if another driver holds the run's lease
    (it is running there: skipped), or took it over while this one ran (a lease that went stale: the other
    driver's outcome is the run's, and this one's is not written)."""
    folder = store.run_folder(out, run)
    if (folder / store.RESULT).exists():
        print(f"[study] run {run.name} ({run.id}) was finished by another driver meanwhile: skipped", flush=True)
        return None
    lease = store.Lease(folder)
    if not lease.claim():
        print(f"[study] run {run.name} ({run.id}) is running elsewhere (its lease is fresh): skipped", flush=True)
        return None
    try:
        store.record_event(out, "started", run)
        _reset_peak_memory()
        try:
            result = _baseline(study, run, folder, progress) if run.is_baseline else \
                _finetune_and_evaluate(study, run, folder, data, progress)
        except Exception as error:  # any failure of one run is recorded and the study goes on
            if not _still_held(lease, run):
                return None
            record_failure(out, run, f"{type(error).__name__}: {error}", traceback.format_exc())
            return False
        if not _still_held(lease, run):
            return None
        write_json_atomic(folder / store.RESULT, result)
        (folder / store.FAILED).unlink(missing_ok=True)
        store.record_event(out, "done", run)
        return True
    finally:
        lease.release()


def _still_held(lease: store.Lease, run: Run) -> bool:
    """Whether this driver may write the run's outcome; if not, says so in one line."""
    if lease.held():
        return True
    print(f"[study] run {run.name} ({run.id}) lost its lease (not renewed for {store.STALE:g} s, or taken over by "
          "another driver): its outcome is not written, the other driver's stands", flush=True)
    return False


def record_failure(out: Path, run: Run, error: str, details: str = "") -> None:
    """failed.json in the run's folder and a `failed` event: the study goes on, the report lists it, and
    `--retry-failed` runs it again."""
    folder = store.run_folder(out, run)
    write_json_atomic(folder / store.FAILED, {"id": run.id, "name": run.name, "values": run.values, "error": error,
                                              "traceback": details})
    store.record_event(out, "failed", run, error=error)
    print(f"[study] run {run.name} ({run.id}) failed: {error}", flush=True)


def _finetune_and_evaluate(study: StudySpec, run: Run, folder: Path, data: Path, progress: bool
                           ) -> dict[str, Any]:
    from llm_adapters.eval import EvalConfig, evaluate
    from llm_adapters.methods import load_adapter
    from llm_adapters.train import FinetuneConfig, finetune

    config = configs.build(FinetuneConfig, {
        **run.finetune, "data": str(data), "output_dir": str(folder / "adapter"), "base_model": study.base_model,
        "adapter": run.spec.to_dict(), "progress": progress}, label=f"run {run.name}")
    adapter = finetune(config)
    manifest = json.loads((adapter / "manifest.json").read_text(encoding="utf-8"))
    loss = manifest["training"]["mean_loss"]
    if loss is None or not math.isfinite(loss):
        raise FloatingPointError(f"the training loss is not finite ({loss}): the run diverged")
    eval_started = time.time()
    settings = configs.build(EvalConfig, {
        **run.evaluate, "base_model": study.base_model, "adapter": str(adapter),
        "output_dir": str(folder / "eval"), "progress": progress}, label=f"run {run.name} evaluate")
    model, tokenizer = _load_for(study.base_model, settings)
    model = load_adapter(model, adapter, base_model=study.base_model)
    evaluation = evaluate(model, tokenizer, settings)
    del model
    return _result(run, study, manifest, adapter, evaluation, time.time() - eval_started, folder)


def _load_for(base_model: str, settings: Any) -> tuple[Any, Any]:
    """The base model as its evaluation settings want it (bf16 on a CPU with bf16 units: fp32 weights whose
    products run in bf16, `models.load_dtype`)."""
    from llm_adapters.models import load_dtype, load_model, resolve_device

    return load_model(base_model, device=settings.device,
                      dtype=load_dtype(resolve_device(settings.device), settings.dtype))


def _baseline(study: StudySpec, run: Run, folder: Path, progress: bool) -> dict[str, Any]:
    """The base model alone, evaluated with the study's settings (`spec.baseline_run`): its record has no
    grid values, no seed, 0 trainable parameters and no training metrics."""
    import torch

    from llm_adapters.eval import EvalConfig, evaluate
    from llm_adapters.methods import count_parameters

    started = time.time()
    settings = configs.build(EvalConfig, {
        **run.evaluate, "base_model": study.base_model, "output_dir": str(folder / "eval"), "progress": progress},
        label=f"run {run.name} evaluate")
    model, tokenizer = _load_for(study.base_model, settings)
    parameters = count_parameters(model)
    evaluation = evaluate(model, tokenizer, settings)
    del model
    return {"id": run.id, "name": run.name, "study": study.name, "base_model": study.base_model, "values": {},
            "baseline": True, "method": "base", "placement": None, "seed": None, "spec": None,
            "parameters": {**parameters, "trainable": 0, "percent": 0.0},
            "metrics": {"peak_rss_bytes": _peak_rss(), "eval_seconds": round(time.time() - started, 1),
                        "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None},
            "tasks": _task_outcomes(evaluation, folder)}


def _result(run: Run, study: StudySpec, manifest: dict[str, Any], adapter: Path, evaluation: dict[str, Any],
            eval_seconds: float, folder: Path) -> dict[str, Any]:
    """The run's record: its grid values, what PEFT's method_comparison records (training wall time, real
    tokens/s, peak memory, adapter size, trainable parameters, evaluation time) and per task its accuracy and
    each question's outcome (for paired tests)."""
    import torch

    training = manifest["training"]
    runtime = training.get("train_runtime_s") or training.get("wall_time_s")
    real_tokens = training["tokens_per_step"] * training["steps"]
    return {
        "id": run.id, "name": run.name, "study": study.name, "base_model": study.base_model, "values": run.values,
        "method": run.spec.method, "placement": _placement(run), "seed": manifest["seed"],
        "spec": run.spec.to_dict(), "parameters": manifest["parameters"],
        "metrics": {"train_seconds": runtime, "real_tokens_per_second": real_tokens / runtime if runtime else None,
                    "peak_rss_bytes": _peak_rss(),
                    "peak_gpu_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
                    "adapter_bytes": sum(p.stat().st_size for p in adapter.glob("adapter_model.*")),
                    "eval_seconds": round(eval_seconds, 1), "mean_loss": training["mean_loss"],
                    "last_loss": training["last_loss"]},
        "tasks": _task_outcomes(evaluation, folder),
    }


def _task_outcomes(evaluation: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Per task: accuracy, n, correct and `outcomes`, the list of each question's outcome in question-index order
    (position i = question i; an evaluation answers questions 0 .. n-1)."""
    from llm_adapters.eval.score import PredictionLog

    tasks = {}
    for name, summary in evaluation["tasks"].items():
        key = "correct" if summary["metric"] == "generate" else "loglik_correct"
        done = PredictionLog(folder / "eval" / name / "predictions.jsonl").load()
        outcomes = [bool(done[i][key]) for i in range(summary["n"])]
        tasks[name] = {"accuracy": summary["accuracy"], "n": summary["n"], "correct": summary["correct"],
                       "group": summary["group"], "outcomes": outcomes}
    return tasks


def _reset_peak_memory() -> None:
    """Start the run's peak memory from now: Linux resets the peak RSS on writing 5 to clear_refs."""
    import torch

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # elsewhere the peak is the process's since it started (said in the record)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_rss() -> int:
    """Peak resident memory of this process since the last reset, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
