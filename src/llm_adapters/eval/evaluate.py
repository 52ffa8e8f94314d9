"""Evaluation: tasks -> prompts -> generation (or log-likelihood) -> extraction -> scores, resumable.

`evaluate(model, tokenizer, config)` receives a loaded model and an `EvalConfig`; it never parses flags or loads
models. Output, under the output folder O:
- `O/run.json`: the model's identity (base model and adapter, by content); a folder holds one model's results;
- `O/<task>/predictions.jsonl`: one record per example, kept for good (a smaller `limit` later reports the first
  N and keeps the rest);
- `O/<task>/summary.json`: accuracy, 95 % Wilson interval, decoding settings, model, adapter, data sha256,
  provenance (versions, device, dtype), seconds, tokens;
- `O/<task>/run.json`: the task's settings that must not change between a run and its resumption;
- `O/results.md`: every task of the folder.

Every requested file is checked before any work: a missing one stops the command with the download command
(unless `skip_missing`), a malformed one with its file, record index and field. A killed run re-run with the
same arguments continues where it stopped and ends with the same files (see `score.PredictionLog`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

from llm_adapters import dist, rundir
from llm_adapters.data.io import TaskData, download_hint, load_task_data, resolve_data_dir
from llm_adapters.data.tasks import TASKS, Task, resolve_tasks
from llm_adapters.data.templates import build_prompt, choice_response
from llm_adapters.errors import MissingInputError, UserError, WaitTimeoutError
from llm_adapters.eval.config import EvalConfig
from llm_adapters.eval.extract import RULES, extract_answer, is_correct
from llm_adapters.eval.decoding import (SPEED_ONLY, DecodeConfig, Generation, batch_invariant, plan_batches,
                                        prompt_lengths)
from llm_adapters.eval.loglik import continuation_logliks
from llm_adapters.eval.stream import generate_stream
from llm_adapters.eval.packed import bf16_products, packed_linears
from llm_adapters.eval.score import PredictionLog, accuracy_summary
from llm_adapters.files import write_json_atomic, write_text_atomic
from llm_adapters.provenance import provenance


INVARIANCE = "invariance.json"


@dataclass(frozen=True)
class Prepared:
    """The tasks to run, read and validated, and those skipped for a missing file (name -> path)."""

    data: list[TaskData]
    skipped: dict[str, str]


def prepare_tasks(config: EvalConfig, tasks: list[Task] | None = None) -> Prepared:
    """Check that every task's file is present, then read and validate each, before any model work.

    Args:
        config: gives the tasks (unless `tasks`), the data directory and `skip_missing`.
        tasks: Task records to use instead of `config.tasks` (tasks that are not in the registry).

    Raises:
        MissingInputError: missing files (all named, with the download command), unless `skip_missing` and at
            least one task remains.
        UserError: malformed JSON or a bad record (file, record index, field).
    """
    resolved = list(tasks) if tasks is not None else resolve_tasks(list(config.tasks))
    root = resolve_data_dir(config.data_dir)
    missing = [t for t in resolved if not (root / t.relpath).is_file()]
    if missing and (not config.skip_missing or len(missing) == len(resolved)):
        files = ", ".join(str(root / t.relpath) for t in missing)
        extra = "" if config.skip_missing else "; or pass --skip-missing to evaluate the others"
        raise MissingInputError(f"missing data for {', '.join(t.name for t in missing)} ({files}); "
                                f"{download_hint(missing, config.data_dir)}{extra}")
    data = [load_task_data(t, root) for t in resolved if t not in missing]
    return Prepared(data, {t.name: str(root / t.relpath) for t in missing})


# ------------------------------------------------------------------------------------------------ one batch

@dataclass(frozen=True)
class _Settings:
    template: str
    decode: DecodeConfig
    config: EvalConfig
    precision: dict[str, str]  # {"device": cpu / cuda / mps, "compute": float32 / bfloat16 / float16 / bf16-products}


def _score(model: Any, tokenizer: Any, task: Task, records: list[dict[str, Any]], indices: list[int],
           prompts: dict[int, str], generations: dict[int, Generation], seconds: float, settings: _Settings
           ) -> list[dict[str, Any]]:
    """The result records of `indices`: their generations scored, and/or their labels' log-likelihoods computed
    here; `seconds` is the time their generation took."""
    start = time.perf_counter()
    results = [{"index": i, "prompt": prompts[i], "gold": records[i]["answer"]} for i in indices]
    rules = settings.config.rules
    if _generates(task, settings.config.scoring):
        for result, index in zip(results, indices):
            generation = generations[index]
            prediction = extract_answer(task, generation.text, rules)
            result.update(generation=generation.text, prediction=prediction,
                          correct=is_correct(task, prediction, result["gold"]), n_tokens=generation.n_tokens)
    if _logliks(task, settings.config.scoring):
        # The continuation the models are trained to produce, tokenised apart from the prompt as in training.
        pairs = [(prompts[i], choice_response(label)) for i in indices for label in task.labels]
        # 8 contexts a pass: 16 and 32 were no faster on the CPU (more padding between sorted lengths), and a model
        # without `logits_to_keep` returns logits for every position: 8 rows of ~150 tokens are ~250 MB.
        scores = continuation_logliks(model, tokenizer, pairs, template=settings.template,
                                      batch_size=min(8, settings.decode.batch_size), split=settings.config.loglik_split)
        for k, result in enumerate(results):
            row = scores[k * len(task.labels):(k + 1) * len(task.labels)]
            best = task.labels[row.index(max(row))]
            result.update(loglik_scores=dict(zip(task.labels, row)), loglik_prediction=best,
                          loglik_correct=best == result["gold"])
    each = (seconds + time.perf_counter() - start) / len(indices)
    for result in results:
        result["seconds"] = round(each, 4)
    return results


def _chunks(model: Any, tokenizer: Any, task: Task, pending: list[int], prompts: dict[int, str],
            settings: _Settings) -> Iterator[tuple[list[int], dict[int, Generation], float]]:
    """The pending questions in chunks of about a batch, with their generations (when the task generates) and
    the seconds these took. Generation streams (`generate_stream`: a finished question's place goes to the next
    one), so a chunk is the next batch of questions to finish; without generation a chunk is a length-sorted
    batch."""
    size = settings.decode.batch_size
    if not _generates(task, settings.config.scoring):
        lengths = prompt_lengths(tokenizer, [prompts[i] for i in pending], settings.template)
        for batch in plan_batches(lengths, size):
            yield [pending[k] for k in batch], {}, 0.0
        return
    chunk: dict[int, Generation] = {}
    start = time.perf_counter()
    stream = generate_stream(model, tokenizer, [prompts[i] for i in pending], task, settings.decode,
                             settings.template)
    for k, generation in stream:
        chunk[pending[k]] = generation
        if len(chunk) == size:
            yield list(chunk), chunk, time.perf_counter() - start
            chunk, start = {}, time.perf_counter()
    if chunk:
        yield list(chunk), chunk, time.perf_counter() - start


def _generates(task: Task, scoring: str) -> bool:
    return scoring != "loglik" or task.answer_type != "label"


def _logliks(task: Task, scoring: str) -> bool:
    return scoring != "generate" and task.answer_type == "label"


# ------------------------------------------------------------------------------------------------ one task

def _accuracy_by_rules(task: Task, records: list[dict[str, Any]], decode: DecodeConfig) -> dict[str, Any]:
    """Accuracy under each rule set, and the text it was computed on. The stop rule ends a row where the default
    rules' answer is settled, so the default rules read the same answer in the cut text as in the full one; the
    original rules read the whole generation (its last number), which a cut text no longer holds: under the
    stop rule their accuracy is not computed."""
    text = "stopped at the default rules' answer" if decode.stop_rules else "the full generation"
    scores: dict[str, Any] = {}
    for rules in RULES:
        honest = rules == "default" or not decode.stop_rules
        accuracy = (sum(is_correct(task, extract_answer(task, r["generation"], rules), r["gold"]) for r in records)
                    / max(1, len(records))) if honest else None
        scores[rules] = {"accuracy": accuracy, "text": text} if honest else {
            "accuracy": None, "text": text, "note": "not computed: the original rules read the full generation; "
                                                    "run with --rules original to have it"}
    return scores


def _summary(task_data: TaskData, done: list[dict[str, Any]], settings: _Settings, model_record: dict[str, Any],
             training_cutoff: int | None) -> dict[str, Any]:
    task, config = task_data.task, settings.config
    generated = _generates(task, config.scoring)
    metric = accuracy_summary(done, "correct" if generated else "loglik_correct")
    summary: dict[str, Any] = {"task": task.name, "task_version": task.version, "group": task.group,
                               "metric": "generate" if generated else "loglik", **metric}
    if generated:
        summary["no_answer"] = sum(r["prediction"] is None for r in done)
        summary["accuracy_by_rules"] = _accuracy_by_rules(task, done, settings.decode)
    if generated and _logliks(task, config.scoring):
        summary["loglik"] = accuracy_summary(done, "loglik_correct")
    seconds = sum(r["seconds"] for r in done)
    summary.update(
        rules=config.rules, template=settings.template, decoding=settings.decode.settings(task),
        scoring=config.scoring, limit=config.limit, **model_record,
        **({"loglik_split": config.loglik_split} if _logliks(task, config.scoring) else {}),
        data={"path": str(task_data.path), "sha256": task_data.sha256, "records": len(task_data.records)},
        seconds=round(seconds, 2), tokens_generated=sum(r.get("n_tokens", 0) for r in done),
        examples_per_second=round(len(done) / seconds, 3) if seconds else None,
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if training_cutoff is not None:
        summary["adapter_cutoff_len"] = training_cutoff
    return summary


@dataclass(frozen=True)
class _TaskPlan:
    """What one task of an evaluation does with its folder (`rundir.plan`), decided by every process."""

    data: TaskData
    folder: Path
    plan: rundir.Plan
    identity: dict[str, Any]
    may_change: dict[str, Any]


def _plan_task(task_data: TaskData, output_dir: Path, settings: _Settings) -> _TaskPlan:
    task, config = task_data.task, settings.config
    decoding = settings.decode.settings(task)
    # where answers do not depend on the batch, its size and the drafts are speed only; elsewhere they are identity
    speed_only = SPEED_ONLY if batch_invariant(settings.precision) else ()
    identity = {"task": task.name, "task_version": task.version, "data_sha256": task_data.sha256,
                "template": settings.template, "rules": config.rules, "scoring": config.scoring,
                **({"loglik_split": config.loglik_split} if _logliks(task, config.scoring) else {}),
                "precision": settings.precision, **{k: v for k, v in decoding.items() if k not in speed_only}}
    may_change = {**{k: decoding[k] for k in speed_only}, "limit": config.limit}
    folder = output_dir / task.name
    plan = rundir.plan(folder, identity, kind="task", outputs=TASK_OUTPUTS,
                       overwrite="different" if config.overwrite else False, may_change=may_change,
                       what="task folder", flag="--output-dir")
    return _TaskPlan(task_data, folder, plan, identity, may_change)


def _begin_task(planned: _TaskPlan) -> None:
    """The main process: the task folder's run.json, and the shares a killed multi-process run left merged."""
    rundir.begin(planned.folder, planned.plan, planned.identity, planned.may_change,
                 record={"data": str(planned.data.path)}, kind="task", outputs=TASK_OUTPUTS)
    _merge_parts(PredictionLog(planned.folder / "predictions.jsonl"))  # whatever the number of processes now


def _limit(task_data: TaskData, config: EvalConfig) -> int:
    records = task_data.records
    return min(len(records), config.limit) if config.limit is not None else len(records)


def _answer_share(model: Any, tokenizer: Any, planned: _TaskPlan, settings: _Settings) -> None:
    """This process's share of the task's pending questions, appended (and fsynced) to its predictions file: the
    task's own with one process, `predictions.rank<r>.jsonl` with several."""
    from tqdm.auto import tqdm

    task, records, config = planned.data.task, planned.data.records, settings.config
    log = PredictionLog(planned.folder / "predictions.jsonl")
    n = _limit(planned.data, config)
    done = log.load()  # every record ever paid for, also those past a smaller limit: none is deleted
    todo = [i for i in range(n) if i not in done]
    pending = dist.share(todo)
    mine = log if dist.world_size() == 1 else PredictionLog(planned.folder / f"predictions.rank{dist.rank()}.jsonl")
    prompts = {i: build_prompt(records[i]["instruction"], records[i].get("input", ""), template=settings.template,
                               tokenizer=tokenizer) for i in pending}
    _check_positions(model, tokenizer, task, prompts, settings)
    with tqdm(total=n, initial=n - len(todo), desc=task.name, unit="ex",
              disable=not config.progress or not dist.is_main()) as bar:
        for indices, generations, seconds in _chunks(model, tokenizer, task, pending, prompts, settings):
            mine.append(_score(model, tokenizer, task, records, indices, prompts, generations, seconds, settings))
            bar.update(len(indices) * dist.world_size())


def _check_positions(model: Any, tokenizer: Any, task: Task, prompts: dict[int, str], settings: _Settings) -> None:
    """Refuse, in one line, a question whose prompt and answer would run past the model's positions (a model with
    learned or tabled positions, OPT, GPT-2, GPT-J, fails there with an IndexError deep inside; rotary models
    (a `rope_parameters` config) read past theirs and are left to it)."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or getattr(config, "rope_parameters", None) is not None or not prompts:
        return
    # the answer: the generation budget, or the longest label's continuation (a few tokens: 16 covers them)
    answer = (settings.decode.max_new_tokens or task.max_new_tokens) if _generates(task, settings.config.scoring) \
        else 16
    indices = list(prompts)
    lengths = prompt_lengths(tokenizer, [prompts[i] for i in indices], settings.template)
    longest = max(range(len(indices)), key=lengths.__getitem__)
    if lengths[longest] + answer > limit:
        raise UserError(f"task {task.name}: question {indices[longest]}'s prompt is {lengths[longest]} tokens and "
                        f"up to {answer} more follow, past the model's {limit} positions (max_position_embeddings); "
                        "use a model with more positions, or --max-new-tokens to shorten generated answers")


def _finish_task(model: Any, tokenizer: Any, planned: _TaskPlan, settings: _Settings, model_record: dict[str, Any],
                 training_cutoff: int | None) -> dict[str, Any]:
    """The main process, once every share is in: merge them, then the summary."""
    task_data, folder, config = planned.data, planned.folder, settings.config
    done = _merge_parts(PredictionLog(folder / "predictions.jsonl"))
    n = _limit(task_data, config)
    reported = [done[i] for i in range(n)]
    summary = _summary(task_data, reported, settings, model_record, training_cutoff)
    if config.check_invariance:
        summary["invariance"] = check_invariance(model, tokenizer, task_data, folder, done, settings)
    if training_cutoff is not None:
        all_lengths = prompt_lengths(tokenizer, [r["prompt"] for r in reported], settings.template)
        summary["prompts_over_adapter_cutoff"] = sum(length >= training_cutoff for length in all_lengths)
    write_json_atomic(folder / "summary.json", summary)
    if not config.progress:  # one line per task instead of the bar, for logs
        print(f"{task_data.task.name}: {summary['n']} examples, {summary['metric']} accuracy "
              f"{100 * summary['accuracy']:.1f} %, {summary['seconds']:.1f} s", flush=True)
    return summary


def _shard_done(output_dir: Path, rank: int) -> Path:
    return output_dir / f".shard{rank}.done"


def _wait_for_shards(output_dir: Path) -> None:
    """The main process waits for every other process's marker: a file, not a collective, so a process that
    finishes its share hours after the others fails nothing while it is answering (torchrun stops the job if a
    process dies). It gives up when the missing processes have appended no answer to their predictions files
    for the process group's timeout (`--dist-timeout`), as a collective would: a hung process, or a node that
    writes into a folder of its own.

    Raises:
        WaitTimeoutError: a marker still missing with no progress for that long: names the ranks and the folder.
    """
    limit = dist.timeout()

    def progress(ranks: list[int]) -> list[tuple[str, int, int]]:
        found = []
        for r in ranks:
            for part in output_dir.glob(f"*/predictions.rank{r}.jsonl"):
                try:
                    stat = part.stat()
                except FileNotFoundError:
                    continue
                found.append((str(part), stat.st_size, stat.st_mtime_ns))
        return sorted(found)

    waiting = [r for r in range(1, dist.world_size()) if not _shard_done(output_dir, r).exists()]
    seen, deadline = progress(waiting), time.monotonic() + limit
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            markers = ", ".join(_shard_done(output_dir, r).name for r in waiting)
            raise WaitTimeoutError(
                f"process(es) of rank {', '.join(map(str, waiting))} did not finish their share and answered "
                f"nothing for --dist-timeout {limit:g} s: no {markers} in {output_dir}; every node must write into "
                "this one folder (a shared file system, not a node-local path), else see those processes' logs "
                "(hung, or slower than the timeout between two answers: raise --dist-timeout)")
        time.sleep(min(0.5, left))
        waiting = [r for r in waiting if not _shard_done(output_dir, r).exists()]
        now = progress(waiting)
        if now != seen:  # a missing process answered more: it is alive
            seen, deadline = now, time.monotonic() + limit


def _merge_parts(log: PredictionLog) -> dict[int, dict[str, Any]]:
    """Fold the per-process files (`predictions.rank<r>.jsonl`) into the task's predictions file, in index order,
    and remove them: the folder then looks as if one process had answered everything."""
    parts = sorted(log.path.parent.glob("predictions.rank*.jsonl"))
    done = log.load()
    for part in parts:
        for index, record in PredictionLog(part).load().items():
            done.setdefault(index, record)
    log.rewrite_sorted(done)
    for part in parts:
        part.unlink()
    return done


# ------------------------------------------------------------------------------------------------ the folder

def results_table(output_dir: str | Path, skipped: dict[str, str] | None = None) -> str:
    """Markdown table of every task evaluated in `output_dir` (from their summary.json), with group averages
    (unweighted means of task accuracies) and the tasks skipped by the latest call."""
    output_dir = Path(output_dir)
    summaries = {}
    for path in sorted(output_dir.glob("*/summary.json")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        summaries[summary["task"]] = summary
    order = {name: i for i, name in enumerate(TASKS)}
    summaries = dict(sorted(summaries.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))
    checked = any("invariance" in s for s in summaries.values())  # `--check-invariance`: one more column
    lines = ["| task | n | accuracy % | 95 % CI | loglik % | no answer | tokens | seconds | ex/s |"
             + (" same alone |" if checked else ""),
             "|---|---:|---:|---|---:|---:|---:|---:|---:|" + ("---:|" if checked else "")]
    for name, s in summaries.items():
        loglik = s.get("loglik", {}).get("accuracy", s["accuracy"] if s["metric"] == "loglik" else None)
        accuracy = f"{100 * s['accuracy']:.1f}" if s["metric"] == "generate" else "–"
        same = s.get("invariance")
        lines.append(f"| {name} | {s['n']} | {accuracy} | {100 * s['ci95'][0]:.1f}–{100 * s['ci95'][1]:.1f} | "
                     f"{'–' if loglik is None else f'{100 * loglik:.1f}'} | {s.get('no_answer', '–')} | "
                     f"{s['tokens_generated']} | {s['seconds']:.1f} | {s['examples_per_second'] or 0:.2f} |"
                     + (f" {same['identical']}/{same['questions']} |" if same else " – |" if checked else ""))
    groups: dict[str, list[float]] = {}
    for s in summaries.values():
        if s["metric"] == "generate":
            groups.setdefault(s["group"], []).append(s["accuracy"])
    if len(groups) > 1:
        groups["all"] = [value for values in groups.values() for value in values]
    tail = " |" if checked else ""
    for group, values in groups.items():
        if len(values) > 1:
            lines.append(f"| **{group} average** | {len(values)} tasks | {100 * sum(values) / len(values):.1f} "
                         "| | | | | | |" + tail)
    lines += [f"| {name} | – | skipped: missing {path} | | | | | | |" + tail
              for name, path in (skipped or {}).items() if name not in summaries]
    if checked:
        lines.append("\n`same alone`: of the questions checked (`--check-invariance`), how many got the same answer "
                     "answered alone (batch 1, no drafts) as in the batched run.")
    return "\n".join(lines) + "\n"


def _adapter_training(config: EvalConfig) -> dict[str, Any]:
    """The template and cutoff the adapter was trained with (its manifest.json), or {}."""
    if not config.adapter:
        return {}
    try:
        manifest = json.loads((Path(config.adapter) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    trained = manifest.get("config", {})
    return {key: trained[key] for key in ("template", "cutoff_len") if key in trained}


TASK_OUTPUTS = ("predictions.jsonl", "predictions.rank*.jsonl", "summary.json", INVARIANCE)


def precision_of(model: Any, dtype: str = "auto") -> dict[str, str]:
    """How `model` computes in an evaluation asked for in `dtype`: its device type and `compute`, the dtype of its
    weights, or `bf16-products` where an fp32 model on a CPU with bf16 units evaluates with bf16 products
    (`models.cpu_bf16_products`, `packed.bf16_products`)."""
    import torch

    from llm_adapters.models import cpu_bf16_products, dtype_name

    parameter = next(model.parameters())
    products = parameter.dtype == torch.float32 and cpu_bf16_products(parameter.device, dtype)
    return {"device": parameter.device.type, "compute": "bf16-products" if products else dtype_name(parameter.dtype)}


def check_invariance(model: Any, tokenizer: Any, task_data: TaskData, folder: Path, done: dict[int, dict[str, Any]],
                     settings: _Settings) -> dict[str, Any]:
    """Answer the task's first `check_invariance` recorded questions again one at a time without drafts, and count
    those whose answer (generation and/or log-likelihood choice) equals the recorded, batched one. Kept in
    `<task>/invariance.json` for the same questions and settings, so a resumed folder does not pay twice."""
    task, config = task_data.task, settings.config
    indices = sorted(done)[:config.check_invariance]
    key = {"indices": indices, "batched": {k: settings.decode.settings(task)[k] for k in SPEED_ONLY},
           "precision": settings.precision}
    path = folder / INVARIANCE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return saved["result"]
    except (OSError, ValueError):
        pass
    alone = _Settings(settings.template, replace(settings.decode, batch_size=1, draft_tokens=0), config,
                      settings.precision)
    prompts = {i: done[i]["prompt"] for i in indices}
    differing = []
    for index in indices:
        for chunk, generations, _ in _chunks(model, tokenizer, task, [index], prompts, alone):
            again = _score(model, tokenizer, task, task_data.records, chunk, prompts, generations, 0.0, alone)[0]
            fields = [f for f in ("generation", "loglik_prediction") if f in again]
            if any(again[f] != done[index].get(f) for f in fields):
                differing.append(index)
    result = {"questions": len(indices), "identical": len(indices) - len(differing), "differing": differing,
              "reference": "each question alone (batch 1), no drafts", "batched": key["batched"],
              "compared": "generation" + (" and log-likelihood choice" if _logliks(task, config.scoring) else "")
              if _generates(task, config.scoring) else "log-likelihood choice"}
    write_json_atomic(path, {"key": key, "result": result})
    return result


def evaluate(model: Any, tokenizer: Any, config: EvalConfig, *, prepared: Prepared | None = None,
             tasks: list[Task] | None = None) -> dict[str, Any]:
    """Evaluate a loaded model (base or PeftModel) on the tasks of `config`; resumable.

    Args:
        model: the model to evaluate, on its device (`models.load_model`, `methods.load_adapter`).
        tokenizer: pads on the left and has a pad token (`models.prepare_tokenizer`).
        config: the evaluation settings; `base_model` and `adapter` name the model in the records.
        prepared: tasks already read by `prepare_tasks(config)` (the CLI reads them before loading a model).
        tasks: Task records to evaluate instead of `config.tasks` (e.g. the demo's held-out task).

    Returns:
        {"tasks": {name: summary}, "skipped": {name: missing path}, "table": Markdown, "output_dir": path}.

    Raises:
        MissingInputError: missing task files (see `prepare_tasks`).
        UserError: bad data, or an output folder holding another model's or other settings' results.

    Example:
        >>> model, tokenizer = load_model("tiny-llama")
        >>> evaluate(model, tokenizer, EvalConfig(base_model="tiny-llama", tasks=("boolq",), limit=8))
    """
    from llm_adapters.methods import adapter_identity
    from llm_adapters.models import base_identity

    prepared = prepared or prepare_tasks(config, tasks)
    trained = _adapter_training(config)
    template = config.template or trained.get("template", "original")
    if config.template is None and "template" in trained and dist.is_main():
        print(f"[evaluate] template {template}: the one the adapter was trained with ({config.adapter}/manifest.json);"
              " --template overrides it", flush=True)
    decode = DecodeConfig.for_protocol(config.protocol, config.batch_size, config.max_new_tokens, config.rules,
                                       config.draft_tokens)
    if prepared.data:  # a chat template missing from the tokenizer fails here, before any work
        build_prompt(prepared.data[0].records[0]["instruction"], template=template, tokenizer=tokenizer)
    if config.scoring == "loglik" and any(d.task.answer_type != "label" for d in prepared.data):
        warnings.warn("log-likelihood scoring needs a label set: the math tasks are scored by generation")
    base_name = config.base_model or getattr(model, "name_or_path", None) or type(model).__name__
    precision = precision_of(model, config.dtype)
    identity = {"base_model": base_identity(base_name), "adapter": adapter_identity(model), "precision": precision}
    output_dir = Path(config.output_dir) if config.output_dir else config.default_output_dir()
    rundir.check_apart(output_dir, {"base model": base_name, "adapter": config.adapter})
    outputs = ("results.md", ".shard*.done", *(d.task.name for d in prepared.data))
    dist.set_timeout(config.dist_timeout)
    plan = rundir.plan(output_dir, identity, kind="evaluation", outputs=outputs,
                       overwrite="different" if config.overwrite else False, what="--output-dir")
    parameter = next(model.parameters())
    model_record = {"model": base_name, "adapter": config.adapter, "model_identity": identity,
                    "provenance": provenance(device=str(parameter.device), dtype=precision["compute"])}
    settings = _Settings(template, decode, config, precision)
    # Under several processes they meet twice: here, once every one has read the folders (the main one then
    # writes them), and at the end, where the main one waits for the others' shares (`_wait_for_shards`).
    planned = [_plan_task(d, output_dir, settings) if plan.action != "replace" else None for d in prepared.data]
    dist.barrier()  # every process has read the folders before the main one changes them
    if dist.is_main():
        rundir.begin(output_dir, plan, identity, record={"base_model": base_name, "adapter": config.adapter},
                     kind="evaluation", outputs=outputs)
        planned = [p or _plan_task(d, output_dir, settings) for p, d in zip(planned, prepared.data)]
        for task_plan in planned:
            _begin_task(task_plan)
        for marker in output_dir.glob(".shard*.done"):
            marker.unlink()
    dist.barrier()
    if not dist.is_main():  # the folders as the main process left them
        planned = [_TaskPlan(d, output_dir / d.task.name, rundir.Plan("resume"), {}, {}) for d in prepared.data]
    generates = any(_generates(d.task, config.scoring) for d in prepared.data)
    # bf16 products for the whole evaluation; else the weights packed once for all the tasks that generate
    # (generate_stream would pack them per task)
    with (bf16_products(model) if precision["compute"] == "bf16-products" else
          packed_linears(model) if generates else contextlib.nullcontext()):
        for task_plan in planned:
            _answer_share(model, tokenizer, task_plan, settings)
        if not dist.is_main():
            write_text_atomic(_shard_done(output_dir, dist.rank()), "done\n")
            return {"tasks": {}, "skipped": prepared.skipped, "table": "", "output_dir": str(output_dir)}
        _wait_for_shards(output_dir)
        summaries = {p.data.task.name: _finish_task(model, tokenizer, p, settings, model_record,
                                                    trained.get("cutoff_len")) for p in planned}
    for marker in output_dir.glob(".shard*.done"):
        marker.unlink()
    table = results_table(output_dir, prepared.skipped)
    write_text_atomic(output_dir / "results.md", table)
    return {"tasks": summaries, "skipped": prepared.skipped, "table": table, "output_dir": str(output_dir)}


def evaluate_tasks(model: Any, tokenizer: Any, tasks: str | list[str] | list[Task], data_dir: str | Path | None,
                   output_dir: str | Path, **fields: Any) -> dict[str, Any]:
    """`evaluate` with the tasks, data folder and output folder given directly; `fields` are other EvalConfig
    fields (limit, batch_size, template, protocol, scoring, rules, max_new_tokens, base_model, adapter,
    overwrite, progress, skip_missing).

    Example:
        >>> evaluate_tasks(model, tokenizer, "gsm8k,boolq", "data", "runs/eval", limit=20)["table"]
    """
    records = [t for t in tasks if isinstance(t, Task)] if isinstance(tasks, list) else []
    names = tasks if not records else ("all",)  # Task records need not be in the registry: passed as they are
    config = EvalConfig(tasks=names, data_dir=str(data_dir) if data_dir else None, output_dir=str(output_dir),
                        **fields)
    return evaluate(model, tokenizer, config, tasks=records or None)

