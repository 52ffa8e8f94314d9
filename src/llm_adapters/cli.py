"""`llm-adapters <command>` (also `python -m llm_adapters`): parsers only. Each command builds one config
dataclass from its flags (and a YAML file where it takes `--config`), through `llm_adapters.config`, and hands it
to one function.

Errors: a user's mistake (`errors.UserError`: a bad flag, value, file or folder) is printed as one line and
exits 2; anything else is a bug and keeps its traceback; `--debug` shows the traceback of either.
"""
from __future__ import annotations

import argparse
import sys

from llm_adapters import config as configs
from llm_adapters.errors import UserError


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="benchmark and training data: download, list, build, check overlap")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    _add_download_list_commands(data_sub)
    _add_build_commands(data_sub)
    _add_check_overlap_command(data_sub)


def _add_download_list_commands(data_sub: argparse._SubParsersAction) -> None:
    from llm_adapters.data.tasks import UPSTREAM

    download = data_sub.add_parser(
        "download", help="fetch benchmark test files, verified against shipped sha256 sums",
        description="Without task names: every task whose file can be verified (HellaSwag, which has no known "
                    "sum, is named with the flag that fetches it).")
    download.add_argument("tasks", nargs="*", help="tasks or groups (default: every verifiable task)")
    download.add_argument("--data-dir", help="target (default: $LLM_ADAPTERS_DATA, else ~/.cache/llm-adapters/data)")
    download.add_argument("--base-url", default=UPSTREAM, help=f"repository root to fetch from (default: {UPSTREAM})")
    download.add_argument("--allow-unverified", action="store_true", help="fetch files with no known sum (hellaswag)")
    download.add_argument("--force", action="store_true", help="replace a present file whose sum differs")
    download.set_defaults(func=_run_data_download)
    listing = data_sub.add_parser("list", help="each benchmark task: records, size, present or missing")
    listing.add_argument("--data-dir", help="(default: $LLM_ADAPTERS_DATA, else ~/.cache/llm-adapters/data)")
    listing.set_defaults(func=_run_data_list)


def _run_data_list(args: argparse.Namespace) -> int:
    from llm_adapters.data.io import list_tasks

    print(list_tasks(args.data_dir))
    return 0


def _run_data_download(args: argparse.Namespace) -> int:
    from llm_adapters.data.io import download_tasks
    from llm_adapters.data.tasks import resolve_tasks

    print("\n".join(download_tasks(resolve_tasks(args.tasks or ["all"]), args.data_dir, base_url=args.base_url,
                                    allow_unverified=args.allow_unverified, force=args.force,
                                    skip_unverified=not args.tasks)))
    return 0


def _add_build_commands(data_sub: argparse._SubParsersAction) -> None:
    from llm_adapters.data.builders import BUILDERS

    build = data_sub.add_parser("build", help="build a training set: OUT.json (LLM-Adapters) + OUT.provenance.json")
    builders = build.add_subparsers(dest="builder", required=True, metavar="BUILDER")
    for name, builder in BUILDERS.items():
        parser = builders.add_parser(name, help=builder.help)
        parser.add_argument("--out", required=True, help="output path; writes OUT.json and OUT.provenance.json")
        parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        configs.add_flags(parser, builder.options)
        parser.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from llm_adapters.data.builders import BUILDERS, log_summary

    builder = BUILDERS[args.builder]
    options = configs.build(builder.options, configs.given(args, builder.options), label=f"data build {args.builder}")
    print(log_summary(builder.build(options, args.out, args.overwrite)))
    return 0


def _add_check_overlap_command(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser("check-overlap", help="report training questions that also occur in test sets")
    parser.add_argument("train", help="training data (JSON list or JSONL with an `instruction` field)")
    parser.add_argument("--tasks", required=True, help="tasks or groups, e.g. gsm8k,addsub or math")
    parser.add_argument("--mode", choices=("ws", "alnum"), default="alnum",
                        help="ws: lower-case + collapsed whitespace; alnum: also only [a-z0-9] and 56.0 -> 56")
    parser.add_argument("--data-dir", help="LLM-Adapters data folder or its parent "
                        "(default: $LLM_ADAPTERS_DATA, else ~/.cache/llm-adapters/data)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--fail-on-overlap", action="store_true", help="exit 1 if any overlap is found")
    parser.set_defaults(func=_run_check_overlap)


def _run_check_overlap(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.data.overlap import check_overlap

    report = check_overlap(args.train, args.tasks, args.data_dir, args.mode)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.format())
    return 1 if args.fail_on_overlap and report.total_matched else 0


def _add_params_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.methods.spec import PRESETS, AdapterSpec

    parser = subparsers.add_parser(
        "params", help="count trainable / total parameters of a method on a model (meta presets need no weights)",
        description="Trainable, total (base + trainable) and percent = 100 * trainable / total, the paper's "
                    "convention. Example: llm-adapters params --model llama-7b --preset paper-lora --json")
    parser.add_argument("--model", required=True,
                        help="a base model: llama-7b, llama-13b, bloomz-7b1, gpt-j-6b (meta device), "
                             "smollm2-135m, tiny-*, or a local folder")
    parser.add_argument("--preset", help=f"a named spec: {', '.join(PRESETS)}")
    configs.add_flags(parser, AdapterSpec)
    parser.add_argument("--json", action="store_true", help="print one JSON object: trainable, total, percent")
    parser.set_defaults(func=_run_params)


def _run_params(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.methods import attach, count_parameters
    from llm_adapters.methods.spec import AdapterSpec, make_spec
    from llm_adapters.models import load_model

    values = {name: configs.coerce(AdapterSpec, name, value)
              for name, value in configs.given(args, AdapterSpec).items()}
    spec = make_spec(args.preset, **values)
    model, _ = load_model(args.model, device="cpu")
    counts = count_parameters(attach(model, spec))
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"{args.model} + {spec.method} ({spec.resolved_placement}): trainable {counts['trainable']:,} / "
              f"total {counts['total']:,} = {counts['percent']:.3f} %")
    return 0


def _add_methods_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("methods", help="the adapter family: name, paper, placements, merges",
                                   description="Every named method, then the PEFT tuner types reachable as "
                                               "peft:<type>.")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(func=_run_methods)


def _run_methods(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.methods import methods_table, peft_types
    from llm_adapters.methods.registry import NOT_OFFERED

    rows = methods_table()
    if args.json:
        print(json.dumps({"methods": rows, "peft_types": peft_types(), "not_offered": NOT_OFFERED}, indent=1))
        return 0
    for row in rows:
        merges = "merges" if row["merges"] else "does not merge"
        note = f"\n          {row['note']}" if row["note"] else ""
        print(f"{row['name']:<9} {row['paper']}\n          placements: {row['placements']} (default "
              f"{row['default']}); uses: {row['uses']}; {merges}{note}")
    print(f"peft:<type> any PEFT tuner of Linear modules, its config fields in peft_options: {', '.join(peft_types())}")
    for name, why in NOT_OFFERED.items():
        print(f"{name:<9} not offered: {why}")
    return 0


def _add_finetune_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.train.config import FinetuneConfig

    parser = subparsers.add_parser(
        "finetune", help="train an adapter on instruction data (resumes after a kill when rerun)",
        description="YAML keys and flags are the same settings; flags override the YAML. Example: "
                    "llm-adapters finetune --config configs/demo.yaml --output-dir runs/demo")
    parser.add_argument("--config", help="YAML file of settings (keys = the flags below, with underscores)")
    _add_nproc_flag(parser)
    configs.add_flags(parser, FinetuneConfig)
    parser.set_defaults(func=_run_finetune)


def _add_nproc_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="run as N processes on this machine (torch.distributed.run --standalone; one per GPU, "
                             "or gloo on the CPU); under torchrun or accelerate launch, leave it out")


def _launched(args: argparse.Namespace) -> int | None:
    """Start this very command as `--nproc-per-node` processes (what `tune run` does for torchrun), or None to go
    on in this process."""
    import os
    import subprocess

    from llm_adapters import dist

    if args.nproc_per_node <= 1 or dist.world_size() > 1:
        return None
    argv, skip = [], False
    for item in args.argv:
        if skip:
            skip = False
        elif item == "--nproc-per-node":
            skip = True
        elif not item.startswith("--nproc-per-node="):
            argv.append(item)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={args.nproc_per_node}", "-m", "llm_adapters", *argv]
    return subprocess.call(command, env=os.environ.copy())


def _run_finetune(args: argparse.Namespace) -> int:
    from llm_adapters.train import FinetuneConfig, finetune

    code = _launched(args)
    if code is not None:
        return code
    finetune(configs.load(FinetuneConfig, args.config, label="finetune config", **configs.given(args, FinetuneConfig)))
    return 0


def _add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.eval.config import EvalConfig

    parser = subparsers.add_parser(
        "evaluate", help="accuracy on the reasoning benchmarks, with or without an adapter (resumable)",
        description="Example: llm-adapters evaluate --base-model smollm2-135m --adapter runs/demo --tasks math "
                    "--limit 50. Re-run the same command after an interruption: it continues where it stopped.")
    parser.add_argument("--config", help="YAML file of settings (keys = the flags below, with underscores)")
    _add_nproc_flag(parser)
    configs.add_flags(parser, EvalConfig)
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from llm_adapters import dist
    from llm_adapters.eval import EvalConfig, evaluate, prepare_tasks
    from llm_adapters.methods import load_adapter
    from llm_adapters.models import load_dtype, load_model, resolve_device

    code = _launched(args)
    if code is not None:
        return code
    config = configs.load(EvalConfig, args.config, label="evaluate settings", **configs.given(args, EvalConfig))
    if not config.base_model:
        raise UserError("evaluate needs --base-model (a built-in name, a local folder or a hub id)")
    prepared = prepare_tasks(config)  # every task file read and checked before the model loads
    # bf16 on a CPU with bf16 units: an fp32 model whose products run in bf16 (evaluate sees config.dtype)
    dtype = load_dtype(resolve_device(config.device), config.dtype)
    model, tokenizer = load_model(config.base_model, device=config.device, dtype=dtype,
                                  trust_remote_code=config.trust_remote_code)
    if config.adapter:
        model = load_adapter(model, config.adapter, base_model=config.base_model,
                             allow_base_mismatch=config.allow_base_mismatch)
    result = evaluate(model, tokenizer, config, prepared=prepared)
    if dist.is_main():
        print(result["table"], end="")
        print(f"results in {result['output_dir']}/ (results.md, <task>/summary.json, <task>/predictions.jsonl)")
    return 0


def _add_study_commands(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="a grid of fine-tune + evaluate runs from one spec: plan, run, "
                                                "status, report")
    sub = study.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    plan = sub.add_parser("plan", help="the runs, their trainable-parameter %%, an estimated cost and the minimum "
                                       "detectable differences",
                          description="Example: llm-adapters study plan configs/studies/mini-rq1-placement.yaml. "
                                      "The minimum detectable differences (80 %% power, two-sided 5 %%) use the "
                                      "spec's `power: {accuracy, seed_sd, correlation}` assumptions.")
    plan.add_argument("spec", help="study spec (YAML)")
    plan.add_argument("--shard", help="only shard i/n of the runs (1-based)")
    plan.add_argument("--json", action="store_true", help="print a JSON list of the runs")
    plan.add_argument("--no-calibrate", action="store_true", help="no time estimate (it loads the model)")
    plan.set_defaults(func=_run_study_plan)
    run = sub.add_parser("run", help="fine-tune then evaluate each run into DIR, skipping finished ones",
                         description="Rerun the same command to resume; --shard i/n splits the runs between "
                                     "machines, whose DIR/runs folders merge by copying.")
    run.add_argument("spec", help="study spec (YAML)")
    run.add_argument("--out", required=True, help="the study folder")
    run.add_argument("--shard", help="only shard i/n of the runs (1-based)")
    run.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    run.add_argument("--no-progress", action="store_true", help="no progress bars inside the runs")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: one run after the other here; ray: each run a Ray task (resources from the spec)")
    run.add_argument("--ray-address", help="a Ray cluster to submit to (default: a local Ray instance)")
    run.set_defaults(func=_run_study_run)
    status = sub.add_parser("status", help="done / running / failed / pending runs of a study folder")
    status.add_argument("dir", help="the study folder")
    status.add_argument("--json", action="store_true", help="print {run name: status}")
    status.set_defaults(func=_run_study_status)
    report = sub.add_parser("report", help="tables, paired comparisons, plots and an HTML page from one or more "
                                           "study folders")
    report.add_argument("dirs", nargs="+", help="study folders (several: compared side by side)")
    report.add_argument("--out", help="where report.md, report.html, table.csv, comparisons.csv, records.json, "
                                      "specs.json and the PNGs go (default: DIR/report)")
    report.add_argument("--json", action="store_true",
                        help="print one record per run x task instead, with each question's outcome")
    report.set_defaults(func=_run_study_report)


def _run_study_plan(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.study import load_study, plan
    from llm_adapters.study.runner import detectable

    study = load_study(args.spec)
    rows = plan(study, args.shard, calibrate=not args.no_calibrate)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        seconds = row.get("estimated_seconds")
        estimate = "" if seconds is None else f", ~{seconds / 60:.1f} min (estimate)" if seconds >= 60 else \
            f", ~{seconds} s (estimate)"
        tokens = f"{row['train_tokens']:,} training tokens" if row["train_tokens"] is not None else \
            "training tokens unknown"
        print(f"{row['id']}  {row['name']:<28} {row['percent']:8.4f} % trainable, {tokens}, "
              f"{row['questions'] if row['questions'] is not None else '?'} questions{estimate}")
    total = sum(row.get("estimated_seconds", 0) for row in rows)
    print(f"{len(rows)} runs" + (f"; estimated {total / 3600:.2f} h on this machine (from a short calibration: an "
                                 "estimate)" if any("estimated_seconds" in row for row in rows) else ""))
    _print_detectable(detectable(study))
    gpus = study.resources.get("gpus")
    print(f"on Ray (--executor ray): each run a task with cpus {study.resources.get('cpus', 1)} and gpus "
          + (f"{gpus}" if gpus is not None else "1 where the cluster has GPUs, else 0 (the spec sets none)"))
    return 0


def _print_detectable(found: dict | None) -> None:
    """`study plan`'s minimum detectable differences, with their formula and assumptions."""
    if found is None:
        print("minimum detectable differences: unknown (the benchmark files are not here to count the questions)")
        return
    a = found["assumptions"]
    k = found["seeds"]
    accuracy = ", ".join(f"{t} {100 * p:.0f} %" for t, p in a["accuracy"].items())
    print(f"\nMinimum detectable difference (80 % power, two-sided 5 %), in accuracy points, for {k} seed(s) per "
          f"configuration:")
    print(f"  {'':<12} " + " ".join(f"{t:>10}" for t in found["between"]))
    print(f"  {'questions':<12} " + " ".join(f"{n:>10}" for n in [*found['questions'].values(),
                                                                  sum(found['questions'].values())]))
    for label, key in (("between two", "between"), ("vs the base", "against_base")):
        if key in found:
            print(f"  {label:<12} " + " ".join(f"{100 * v:>10.1f}" for v in found[key].values()))
    print(f"  MDD = (z_0.975 + z_0.80) x SE = 2.80 x sqrt(V_q + V_s); V_q = sum_t 2 p_t (1 - p_t) (1 - rho) / N_t / "
          f"T^2 (per task: T = 1); V_s = sd^2 / k per side with k >= 2 (the base model: none).")
    print(f"  Assumed (the spec's `power` section): accuracy p_t {accuracy}; seed sd {100 * a['seed_sd']:.1f} "
          f"points; correlation rho of two configurations' per-question outcomes {a['correlation']}.")
    if k < 2:
        print("  One seed: the training noise is not measured, so the report's test leaves it out and these "
              "differences may be training noise; plan 2 or more seeds.")
    if found["configurations"] > 1:
        print("  Holm's correction over the report's comparisons asks more of the smallest p-value than 5 %: the "
              "detectable differences are larger when many comparisons are made.")


def _run_study_run(args: argparse.Namespace) -> int:
    from llm_adapters.study import load_study, run_study

    counts = run_study(load_study(args.spec), args.out, args.shard, retry_failed=args.retry_failed,
                       progress=not args.no_progress, executor=args.executor, ray_address=args.ray_address)
    return 1 if counts["failed"] else 0


def _run_study_status(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.study import expand
    from llm_adapters.study import store

    runs = expand(store.saved_study(args.dir))
    states = {run.name: store.status(store.run_folder(args.dir, run)) for run in runs}
    if args.json:
        print(json.dumps(states, indent=1))
        return 0
    for run in runs:
        print(f"{states[run.name]:<12} {run.name} ({run.id})")
    counts = {state: list(states.values()).count(state) for state in dict.fromkeys(states.values())}
    print(", ".join(f"{n} {state}" for state, n in counts.items()))
    return 0


def _run_study_report(args: argparse.Namespace) -> int:
    from llm_adapters.study.records import load_study_records
    from llm_adapters.study.report import records_json, write_report

    if args.json:
        print(records_json(load_study_records(args.dirs)), end="")
        return 0
    result = write_report(args.dirs, args.out)
    print(result["markdown"], end="")
    print(f"report in {result['folder']}/ (report.md, report.html, table.csv, comparisons.csv, records.json, "
          "specs.json, PNG plots)")
    return 0


def _add_export_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.export.config import ExportConfig

    parser = subparsers.add_parser(
        "export", help="ship an adapter: merged into its base (transformers folder or GGUF), or as a GGUF LoRA",
        description="Examples: llm-adapters export runs/demo --out runs/demo-hf; llm-adapters export runs/demo "
                    "--out runs/demo-gguf --format gguf --dtype f16; llm-adapters export runs/demo --out "
                    "runs/demo-lora --format gguf-lora. Series, Parallel and prompt-learning adapters change no "
                    "weight and are refused (evaluate them here).")
    parser.add_argument("adapter", metavar="ADAPTER", help=configs.fields(ExportConfig)["adapter"].metadata["help"])
    configs.add_flags(parser, ExportConfig, exclude=("adapter",))
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from llm_adapters.export import ExportConfig, export_adapter

    export_adapter(configs.build(ExportConfig, {**configs.given(args, ExportConfig), "adapter": args.adapter},
                                 label="export settings"))
    return 0


def _add_generate_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.compare import GenerateConfig

    parser = subparsers.add_parser(
        "generate", help="the base model and each adapter answering the same prompts, side by side",
        description="Greedy answers of the evaluation engine. Examples: llm-adapters generate --base-model "
                    "smollm2-135m --adapter runs/demo --prompt 'What is 12 plus 30?'; llm-adapters generate "
                    "--base-model smollm2-135m --adapter runs/a runs/b --prompts questions.jsonl --task gsm8k --json")
    parser.add_argument("--adapter", action="extend", nargs="+", default=argparse.SUPPRESS, metavar="ADAPTER",
                        help=configs.fields(GenerateConfig)["adapter"].metadata["help"] + " (several after one "
                        "flag, or the flag repeated)")
    configs.add_flags(parser, GenerateConfig, exclude=("adapter",))
    parser.set_defaults(func=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.compare import GenerateConfig, format_rows, generate

    values = configs.given(args, GenerateConfig)
    if "adapter" in values:
        values["adapter"] = tuple(values["adapter"])
    rows = generate(configs.build(GenerateConfig, values, label="generate settings"))
    as_json = getattr(args, "json", False)  # a boolean flag that was not given is not in args
    print("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows) if as_json else format_rows(rows),
          end="")
    return 0


def _add_ui_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.ui.config import UiConfig

    parser = subparsers.add_parser(
        "ui", help="a local web app: compare models side by side, read a study, browse runs (Gradio)",
        description="Tabs Compare, Study, Runs; offline, listening on 127.0.0.1 unless --host says otherwise. "
                    "Example: llm-adapters ui --base-model smollm2-135m --adapter runs/demo --study runs/studies/x")
    for name in ("adapter", "study"):
        parser.add_argument(f"--{name}", action="extend", nargs="+", default=argparse.SUPPRESS,
                            metavar=name.upper(), help=configs.fields(UiConfig)[name].metadata["help"])
    configs.add_flags(parser, UiConfig, exclude=("adapter", "study"))
    parser.set_defaults(func=_run_ui)


def _run_ui(args: argparse.Namespace) -> int:
    from llm_adapters.ui import UiConfig, launch

    values = {k: tuple(v) if k in ("adapter", "study") else v for k, v in configs.given(args, UiConfig).items()}
    launch(configs.build(UiConfig, values, label="ui settings"))
    return 0


def _add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.demo import DemoOptions

    parser = subparsers.add_parser(
        "demo", help="the main job: evaluate the embedded model, fine-tune it with paper-lora, evaluate again",
        description="Offline, on the embedded SmolLM2-135M: held-out synthetic word problems before and after "
                    "fine-tuning. Rerun to resume after a kill.")
    configs.add_flags(parser, DemoOptions)
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from llm_adapters.demo import DemoOptions, run_demo

    run_demo(configs.build(DemoOptions, configs.given(args, DemoOptions), label="demo options"))
    return 0


def make_parser() -> argparse.ArgumentParser:
    from llm_adapters import __version__

    parser = argparse.ArgumentParser(
        prog="llm-adapters",
        description="Adapter-based PEFT for causal LMs: attach, count, fine-tune, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"llm-adapters {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # COMMANDS (each adds its parser here and sets `func`)
    _add_evaluate_command(subparsers)
    _add_finetune_command(subparsers)
    _add_params_command(subparsers)
    _add_methods_command(subparsers)
    _add_study_commands(subparsers)
    _add_export_command(subparsers)
    _add_generate_command(subparsers)
    _add_ui_command(subparsers)
    _add_demo_command(subparsers)
    _add_data_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        if args.debug:
            raise
        print(f"llm-adapters {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
