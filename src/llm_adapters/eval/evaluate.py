"""`llm-adapters evaluate`: tasks -> prompts -> generation (or log-likelihood) -> extraction -> scores, resumable.

Output, per task: `O/<task>/predictions.jsonl` (one record per example), `O/<task>/summary.json` (accuracy,
95 % Wilson interval, decoding settings, model, adapter, data sha256, versions, seconds, tokens) and
`O/<task>/run.json` (what must not change between a run and its resumption); for all tasks, `O/results.md`.

Every requested file is checked before any work: a missing one stops the command with the download command
(unless `skip_missing`), a malformed one with its file, record index and field. A killed run re-run with the
same arguments continues where it stopped and ends with the same files (see `score.PredictionLog`).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from llm_adapters.data.io import TaskData, download_hint, load_task_data, resolve_data_dir, write_json_atomic
from llm_adapters.data.tasks import TASKS, Task, resolve_tasks
from llm_adapters.data.templates import build_prompt
from llm_adapters.eval.extract import RULES, Rules, extract_answer, is_correct
from llm_adapters.eval.generate import (DecodeConfig, Protocol, continuation_logliks, generate_batch,
                                        plan_batches, prompt_lengths)
from llm_adapters.eval.score import PredictionLog, accuracy_summary

Scoring = Literal["generate", "loglik", "both"]
SCORINGS: tuple[str, ...] = ("generate", "loglik", "both")


@dataclass(frozen=True)
class Prepared:
    """The tasks to run, read and validated, and those skipped for a missing file (name -> path)."""

    data: list[TaskData]
    skipped: dict[str, str]


def prepare_tasks(tasks: str | list[str] | list[Task], data_dir: str | Path | None,
                  skip_missing: bool = False) -> Prepared:
    """Check that every task's file is present, then read and validate each, before any model work.

    Raises:
        FileNotFoundError: missing files (all named, with the download command), unless `skip_missing`
            and at least one task remains.
        ValueError: an unknown task, malformed JSON or a bad record (file, record index, field).
    """
    if isinstance(tasks, list) and tasks and all(isinstance(t, Task) for t in tasks):
        resolved: list[Task] = list(tasks)  # type: ignore[arg-type]
    else:
        resolved = resolve_tasks(tasks)  # type: ignore[arg-type]
    root = resolve_data_dir(data_dir)
    missing = [t for t in resolved if not (root / t.relpath).is_file()]
    if missing and (not skip_missing or len(missing) == len(resolved)):
        files = ", ".join(str(root / t.relpath) for t in missing)
        extra = "" if skip_missing else "; or pass --skip-missing to evaluate the others"
        raise FileNotFoundError(f"missing data for {', '.join(t.name for t in missing)} ({files}); "
                                f"{download_hint(missing, data_dir)}{extra}")
    data = [load_task_data(t, root) for t in resolved if t not in missing]
    return Prepared(data, {t.name: str(root / t.relpath) for t in missing})


def _versions() -> dict[str, str]:
    import llm_adapters  # at call time: the package root may import this module

    versions = {"python": platform.python_version(), "llm-adapters": llm_adapters.__version__}
    for package in ("torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _check_run(folder: Path, identity: dict[str, Any], overwrite: bool) -> None:
    """Start a task folder, or make sure the results already there come from the same run."""
    run_file = folder / "run.json"
    if run_file.exists() and overwrite:
        shutil.rmtree(folder)
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        changed = [f"{key}: {previous.get(key)!r} -> {value!r}" for key, value in identity.items()
                   if previous.get(key) != value]
        if changed:
            raise ValueError(f"{folder} holds results of another run ({'; '.join(changed)}); "
                             "use another --output-dir, or --overwrite to start again")
        return
    write_json_atomic(run_file, identity)


@dataclass(frozen=True)
class _Settings:
    template: str
    config: DecodeConfig
    scoring: Scoring
    rules: Rules
    limit: int | None


def _score_batch(model: Any, tokenizer: Any, task: Task, records: list[dict[str, Any]], indices: list[int],
                 prompts: dict[int, str], settings: _Settings, add_special: bool) -> list[dict[str, Any]]:
    """Generate and/or score the log-likelihood of one batch; one result record per index."""
    start = time.perf_counter()
    batch_prompts = [prompts[i] for i in indices]
    results = [{"index": i, "prompt": prompts[i], "gold": records[i]["answer"]} for i in indices]
    if _generates(task, settings.scoring):
        generations = generate_batch(model, tokenizer, batch_prompts, task, settings.config, add_special)
        for result, generation in zip(results, generations):
            prediction = extract_answer(task, generation.text, settings.rules)
            result.update(generation=generation.text, prediction=prediction,
                          correct=is_correct(task, prediction, result["gold"]), n_tokens=generation.n_tokens)
    if _logliks(task, settings.scoring):
        # The continuation the models are trained to produce: "the correct answer is <label>".
        pairs = [(p, f"the correct answer is {label}") for p in batch_prompts for label in task.labels]
        # Full-vocabulary logits for every position: 8 rows of ~150 tokens are ~250 MB with a 49k vocabulary.
        scores = continuation_logliks(model, tokenizer, pairs, batch_size=min(8, settings.config.batch_size),
                                      add_special_tokens=add_special)
        for k, result in enumerate(results):
            row = scores[k * len(task.labels):(k + 1) * len(task.labels)]
            best = task.labels[row.index(max(row))]
            result.update(loglik_scores=dict(zip(task.labels, row)), loglik_prediction=best,
                          loglik_correct=best == result["gold"])
    seconds = (time.perf_counter() - start) / len(indices)
    for result in results:
        result["seconds"] = round(seconds, 4)
    return results


def _generates(task: Task, scoring: Scoring) -> bool:
    return scoring != "loglik" or task.answer_type != "label"


def _logliks(task: Task, scoring: Scoring) -> bool:
    return scoring != "generate" and task.answer_type == "label"


def _summary(task_data: TaskData, done: dict[int, dict[str, Any]], settings: _Settings,
             run: dict[str, Any]) -> dict[str, Any]:
    task, records = task_data.task, list(done.values())
    generated = _generates(task, settings.scoring)
    metric = accuracy_summary(records, "correct" if generated else "loglik_correct")
    summary: dict[str, Any] = {"task": task.name, "task_version": task.version, "group": task.group,
                               "metric": "generate" if generated
                               else "loglik", **metric}
    if generated:
        summary["no_answer"] = sum(r["prediction"] is None for r in records)
        summary["accuracy_by_rules"] = {
            rules: sum(is_correct(task, extract_answer(task, r["generation"], rules), r["gold"])
                       for r in records) / max(1, len(records)) for rules in RULES}
    if generated and _logliks(task, settings.scoring):
        summary["loglik"] = accuracy_summary(records, "loglik_correct")
    seconds = sum(r["seconds"] for r in records)
    summary.update(
        rules=settings.rules, template=settings.template, decoding=settings.config.settings(task),
        scoring=settings.scoring, limit=settings.limit, model=run["model"], adapter=run["adapter"],
        data={"path": str(task_data.path), "sha256": task_data.sha256, "records": len(task_data.records)},
        versions=_versions(), seconds=round(seconds, 2),
        tokens_generated=sum(r.get("n_tokens", 0) for r in records),
        examples_per_second=round(len(records) / seconds, 3) if seconds else None,
        finished=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return summary


def _evaluate_task(model: Any, tokenizer: Any, task_data: TaskData, output_dir: Path, settings: _Settings,
                   run: dict[str, Any], overwrite: bool, progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    task, records = task_data.task, task_data.records
    folder = output_dir / task.name
    identity = {**run, "task": task.name, "task_version": task.version, "data_sha256": task_data.sha256,
                "template": settings.template, "rules": settings.rules, "scoring": settings.scoring,
                **{k: v for k, v in settings.config.settings(task).items() if k != "batch_size"}}
    _check_run(folder, identity, overwrite)
    n = min(len(records), settings.limit) if settings.limit is not None else len(records)
    log = PredictionLog(folder / "predictions.jsonl")
    done = {i: r for i, r in log.load().items() if i < n}
    pending = [i for i in range(n) if i not in done]
    add_special = settings.template != "chat"  # a chat template writes its own special tokens
    prompts = {i: build_prompt(records[i]["instruction"], records[i].get("input", ""), template=settings.template,
                               tokenizer=tokenizer) for i in pending}
    lengths = prompt_lengths(tokenizer, [prompts[i] for i in pending], add_special)
    with tqdm(total=n, initial=n - len(pending), desc=task.name, unit="ex", disable=not progress) as bar:
        for batch in plan_batches(lengths, settings.config.batch_size):
            indices = [pending[k] for k in batch]
            results = _score_batch(model, tokenizer, task, records, indices, prompts, settings, add_special)
            log.append(results)
            done.update((r["index"], r) for r in results)
            bar.update(len(results))
    log.rewrite_sorted(done)
    summary = _summary(task_data, done, settings, run)
    write_json_atomic(folder / "summary.json", summary)
    if not progress:  # one line per task instead of the bar, for logs
        print(f"{task.name}: {summary['n']} examples, {summary['metric']} accuracy {100 * summary['accuracy']:.1f} %, "
              f"{summary['seconds']:.1f} s", flush=True)
    return summary


def _table(summaries: dict[str, dict[str, Any]], skipped: dict[str, str]) -> str:
    """Markdown table of every task, with group averages (unweighted means of task accuracies)."""
    lines = ["| task | n | accuracy % | 95 % CI | loglik % | no answer | tokens | seconds | ex/s |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, s in summaries.items():
        loglik = s.get("loglik", {}).get("accuracy", s["accuracy"] if s["metric"] == "loglik" else None)
        accuracy = f"{100 * s['accuracy']:.1f}" if s["metric"] == "generate" else "–"
        lines.append(f"| {name} | {s['n']} | {accuracy} | {100 * s['ci95'][0]:.1f}–{100 * s['ci95'][1]:.1f} | "
                     f"{'–' if loglik is None else f'{100 * loglik:.1f}'} | {s.get('no_answer', '–')} | "
                     f"{s['tokens_generated']} | {s['seconds']:.1f} | {s['examples_per_second'] or 0:.2f} |")
    groups: dict[str, list[float]] = {}
    for name, s in summaries.items():
        if s["metric"] == "generate":
            groups.setdefault(s["group"], []).append(s["accuracy"])
    if len(groups) > 1:
        groups["all"] = [value for values in groups.values() for value in values]
    for group, values in groups.items():
        if len(values) > 1:
            lines.append(f"| **{group} average** | {len(values)} tasks | {100 * sum(values) / len(values):.1f} "
                         "| | | | | | |")
    lines += [f"| {name} | – | skipped: missing {path} | | | | | | |" for name, path in skipped.items()]
    return "\n".join(lines) + "\n"


def evaluate_prepared(model: Any, tokenizer: Any, prepared: Prepared, output_dir: str | Path, *,
                      batch_size: int | None = None, limit: int | None = None, template: str = "original",
                      protocol: Protocol = "fast", scoring: Scoring = "generate", rules: Rules = "default",
                      max_new_tokens: int | None = None, model_name: str | None = None,
                      adapter_name: str | None = None, overwrite: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """`evaluate_tasks` on tasks already read by `prepare_tasks` (the CLI validates data before loading a model)."""
    problems = [f"scoring {scoring!r} is not one of {', '.join(SCORINGS)}"] if scoring not in SCORINGS else []
    problems += [f"rules {rules!r} is not one of {', '.join(RULES)}"] if rules not in RULES else []
    problems += [f"limit must be >= 1, got {limit}"] if limit is not None and limit < 1 else []
    if problems:
        raise ValueError("; ".join(problems))
    config = DecodeConfig.for_protocol(protocol, batch_size, max_new_tokens)
    settings = _Settings(template, config, scoring, rules, limit)
    if prepared.data:  # a chat template missing from the tokenizer fails here, before any work
        build_prompt(prepared.data[0].records[0]["instruction"], template=template, tokenizer=tokenizer)
    if scoring == "loglik" and any(d.task.answer_type != "label" for d in prepared.data):
        warnings.warn("log-likelihood scoring needs a label set: the math tasks are scored by generation")
    run = {"model": model_name or getattr(model, "name_or_path", None) or type(model).__name__,
           "adapter": adapter_name}
    output_dir = Path(output_dir)
    summaries = {d.task.name: _evaluate_task(model, tokenizer, d, output_dir, settings, run, overwrite, progress)
                 for d in prepared.data}
    table = _table(summaries, prepared.skipped)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.md").write_text(table)
    return {"tasks": summaries, "skipped": prepared.skipped, "table": table}


def evaluate_tasks(model: Any, tokenizer: Any, tasks: str | list[str] | list[Task],
                   data_dir: str | Path | None, output_dir: str | Path, *, skip_missing: bool = False,
                   **options: Any) -> dict[str, Any]:
    """Evaluate an already-loaded model (base or PEFT) on benchmark tasks, resumably.

    Args:
        model, tokenizer: from `models.load_model` (the tokenizer pads on the left), optionally with an adapter.
        tasks: names or groups (`"gsm8k,boolq"`, `"math"`, `["all"]`) or Task objects.
        data_dir: holds `dataset/<folder>/test.json` (None: `$LLM_ADAPTERS_DATA`, else the user cache).
        output_dir: where `<task>/predictions.jsonl`, `<task>/summary.json` and `results.md` go.
        skip_missing: evaluate the tasks whose files are present, list the others as skipped.
        **options: batch_size, limit (first N examples), template ("original", "alpaca", "chat"), protocol
            ("fast", "original"), scoring ("generate", "loglik", "both"), rules ("default", "original"),
            max_new_tokens, model_name, adapter_name (recorded in the summaries), overwrite (discard
            results of another run in output_dir), progress (progress bars).

    Returns:
        {"tasks": {name: summary}, "skipped": {name: missing path}, "table": Markdown}.

    Raises:
        FileNotFoundError: missing task files (see `prepare_tasks`).
        ValueError: bad data, a bad option, or an output folder holding another run's results.

    Example:
        >>> model, tokenizer = load_model("tiny-llama")
        >>> evaluate_tasks(model, tokenizer, "boolq", data_dir, "out", limit=8)["tasks"]["boolq"]["accuracy"]
    """
    prepared = prepare_tasks(tasks, data_dir, skip_missing)
    return evaluate_prepared(model, tokenizer, prepared, output_dir, **options)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text.rstrip("/")).name).strip("-") or "model"


def run_evaluate(args: argparse.Namespace) -> int:
    """The `evaluate` command: validate the data, load the model (and adapter), evaluate, print the table."""
    from llm_adapters.models import load_model

    prepared = prepare_tasks(args.tasks, args.data_dir, args.skip_missing)
    model, tokenizer = load_model(args.base_model)
    if args.adapter:
        from llm_adapters.methods import load_adapter

        model = load_adapter(model, args.adapter)
    output_dir = args.output_dir or Path("runs") / "eval" / "-".join(
        _slug(x) for x in (args.base_model, args.adapter) if x)
    result = evaluate_prepared(
        model, tokenizer, prepared, output_dir, batch_size=args.batch_size, limit=args.limit,
        template=args.template, protocol=args.protocol, scoring=args.scoring, rules=args.rules,
        max_new_tokens=args.max_new_tokens, model_name=args.base_model, adapter_name=args.adapter,
        overwrite=args.overwrite, progress=not args.no_progress)
    print(result["table"], end="")
    print(f"results in {output_dir}/ (results.md, <task>/summary.json, <task>/predictions.jsonl)")
    return 0
