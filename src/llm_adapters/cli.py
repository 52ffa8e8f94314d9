"""`llm-adapters <command>`: thin. Each command parses and validates its flags, then calls one module function.

Command modules are imported inside the command that needs them. The package root itself imports PEFT (and so
torch and transformers) to register the bottleneck method, which costs `--help` a few seconds.
"""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A mistake in the user's input: printed as one line, no traceback."""


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="benchmark and training data: download, list, build, check overlap")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    # DATA SUBCOMMANDS (each adds its parser here and sets `func`)
    _add_download_list_commands(data_sub)
    _add_build_commands(data_sub)
    _add_check_overlap_command(data_sub)


def _add_download_list_commands(data_sub: argparse._SubParsersAction) -> None:
    from llm_adapters.data.tasks import UPSTREAM

    download = data_sub.add_parser("download", help="fetch benchmark test files, verified against shipped sha256 sums")
    download.add_argument("tasks", nargs="*", default=["all"], help="tasks or groups (default: all)")
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

    print("\n".join(download_tasks(resolve_tasks(args.tasks), args.data_dir, base_url=args.base_url,
                                    allow_unverified=args.allow_unverified, force=args.force)))
    return 0


def _add_option_flags(parser: argparse.ArgumentParser, options_cls: type) -> None:
    """One flag per field of an options dataclass: `--max-per-task`; a bool defaulting to True becomes `--no-x`."""
    import dataclasses

    for f in dataclasses.fields(options_cls):
        flag, help = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if f.type == "bool":
            off = "--no-" + flag[2:]
            action = "store_false" if f.default else "store_true"
            parser.add_argument(off if f.default else flag, dest=f.name, action=action, help=help)
            continue
        kind = int if f.type.startswith("int") else float if f.type.startswith("float") else str
        default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        parser.add_argument(flag, dest=f.name, type=kind, default=default, help=f"{help} (default: {default})")


def _options_from_args(options_cls: type, args: argparse.Namespace):
    import dataclasses

    return options_cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(options_cls)})


def _add_build_commands(data_sub: argparse._SubParsersAction) -> None:
    import functools

    from llm_adapters.data import build_commonsense, build_math, build_synthetic

    build = data_sub.add_parser("build", help="build a training set: OUT.json (LLM-Adapters) + OUT.provenance.json")
    builders = build.add_subparsers(dest="builder", required=True, metavar="BUILDER")
    for name, function, options_cls, help in (
        ("commonsense", build_commonsense.build_commonsense, build_commonsense.CommonsenseOptions,
         "the Commonsense170K recipe from the training splits present"),
        ("math", build_math.build_math, build_math.MathOptions,
         "GSM8K train + MAWPS train + AQuA dev with rationales, in the Math10K format"),
        ("synthetic-arithmetic", build_synthetic.build_synthetic_arithmetic, build_synthetic.SyntheticOptions,
         "seeded one- and two-step word problems (no download)"),
    ):
        parser = builders.add_parser(name, help=help)
        parser.add_argument("--out", required=True, help="output path; writes OUT.json and OUT.provenance.json")
        parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        _add_option_flags(parser, options_cls)
        parser.set_defaults(func=functools.partial(_run_build, function, options_cls))


def _run_build(function, options_cls: type, args: argparse.Namespace) -> int:
    from llm_adapters.data.build import log_summary

    print(log_summary(function(_options_from_args(options_cls, args), args.out, args.overwrite)))
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


def add_spec_flags(parser: argparse.ArgumentParser) -> None:
    """--preset and one flag per AdapterSpec field (unset flags keep the preset's or the method's defaults)."""
    import dataclasses

    from llm_adapters.methods.spec import PRESETS, AdapterSpec

    parser.add_argument("--preset", help=f"a named spec: {', '.join(PRESETS)}")
    for f in dataclasses.fields(AdapterSpec):
        kind = int if f.type == "int" else float if f.type == "float" else str
        if f.type == "bool":
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action="store_true", default=None,
                                help=f.metadata["help"])
            continue
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=None,
                            help=f"{f.metadata['help']} (default: {f.default if f.default is not dataclasses.MISSING else 'required without --preset'})")


def spec_from_args(args: argparse.Namespace):
    import dataclasses

    from llm_adapters.methods.spec import AdapterSpec, make_spec

    return make_spec(args.preset, **{f.name: getattr(args, f.name) for f in dataclasses.fields(AdapterSpec)})


def _add_params_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "params", help="count trainable / total parameters of a method on a model (meta presets need no weights)",
        description="Trainable, total (base + trainable) and percent = 100 * trainable / total, the paper's "
                    "convention. Example: llm-adapters params --model llama-7b --preset paper-lora --json")
    parser.add_argument("--model", required=True,
                        help="a base model: llama-7b, llama-13b, bloomz-7b1, gpt-j-6b (meta device), "
                             "smollm2-135m, tiny-*, or a local folder")
    add_spec_flags(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object: trainable, total, percent")
    parser.set_defaults(func=_run_params)


def _run_params(args: argparse.Namespace) -> int:
    import json

    from llm_adapters.methods import attach, count_parameters
    from llm_adapters.models import load_model

    spec = spec_from_args(args)
    model, _ = load_model(args.model)
    counts = count_parameters(attach(model, spec))
    if args.json:
        print(json.dumps(counts))
    else:
        print(f"{args.model} + {spec.method} ({spec.resolved_placement}): trainable {counts['trainable']:,} / "
              f"total {counts['total']:,} = {counts['percent']:.3f} %")
    return 0


def _add_finetune_command(subparsers: argparse._SubParsersAction) -> None:
    from llm_adapters.train_config import add_config_flags

    parser = subparsers.add_parser(
        "finetune", help="train an adapter on instruction data (resumes after a kill when rerun)",
        description="YAML keys and flags are the same settings; flags override the YAML. Example: "
                    "llm-adapters finetune --config configs/demo.yaml --output-dir runs/demo")
    add_config_flags(parser)
    parser.set_defaults(func=_run_finetune)


def _run_finetune(args: argparse.Namespace) -> int:
    from llm_adapters.train import finetune
    from llm_adapters.train_config import config_from_args

    finetune(config_from_args(args))
    return 0


def _add_evaluate_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="accuracy on the reasoning benchmarks, with or without an adapter (resumable)",
        description="Example: llm-adapters evaluate --base-model smollm2-135m --adapter runs/demo --tasks math "
                    "--limit 50. Re-run the same command after an interruption: it continues where it stopped.")
    parser.add_argument("--base-model", required=True, help="built-in name (smollm2-135m, tiny-llama...) or path")
    parser.add_argument("--adapter", help="a saved adapter folder (PEFT format); none: the base model alone")
    parser.add_argument("--tasks", default="all", help="tasks or groups: gsm8k,boolq / math / commonsense / all")
    parser.add_argument("--data-dir", help="(default: $LLM_ADAPTERS_DATA, else ~/.cache/llm-adapters/data)")
    parser.add_argument("--output-dir", help="(default: runs/eval/<model>[-<adapter>])")
    parser.add_argument("--limit", type=int, help="evaluate the first N examples of each task")
    parser.add_argument("--batch-size", type=int, help="prompts per batch (default: 32 fast, 1 original)")
    parser.add_argument("--template", default="original", choices=("original", "alpaca", "chat"),
                        help="prompt template (default: the original evaluation template, byte for byte)")
    parser.add_argument("--protocol", default="fast", choices=("fast", "original"),
                        help="fast: greedy + stop rules; original: the original's 4-beam search, no stop rule")
    parser.add_argument("--scoring", default="generate", choices=("generate", "loglik", "both"),
                        help="loglik: pick the most likely label (commonsense tasks), reported separately")
    parser.add_argument("--rules", default="default", choices=("default", "original"),
                        help="answer extraction: fixed rules, or the original's exactly")
    parser.add_argument("--max-new-tokens", type=int, help="(default: the task's, 256 math / 32 commonsense)")
    parser.add_argument("--skip-missing", action="store_true", help="evaluate the tasks whose data is present")
    parser.add_argument("--overwrite", action="store_true", help="discard another run's results in --output-dir")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from llm_adapters.eval.evaluate import run_evaluate

    return run_evaluate(args)


def _add_demo_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="the main job: evaluate the embedded model, fine-tune it with paper-lora, evaluate again",
        description="Offline, on the embedded SmolLM2-135M: held-out synthetic word problems before and after "
                    "fine-tuning. Rerun to resume after a kill.")
    parser.add_argument("--config", default="configs/demo.yaml", help="fine-tuning config (default: %(default)s)")
    parser.add_argument("--output-dir", default="demo-output", help="results folder (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=80, help="held-out problems (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default: %(default)s)")
    parser.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from llm_adapters.demo import DemoOptions, run_demo

    run_demo(DemoOptions(config=args.config, output_dir=args.output_dir, n_test=args.n_test,
                         batch_size=args.batch_size))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-adapters",
        description="Adapter-based PEFT for causal LMs: attach, count, fine-tune, evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # COMMANDS (each adds its parser here and sets `func`)
    _add_evaluate_command(subparsers)
    _add_params_command(subparsers)
    _add_demo_command(subparsers)
    _add_data_commands(subparsers)
    _add_finetune_command(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as error:
        # Users' mistakes surface as ValueError/FileNotFoundError with a message that names the bad value.
        print(f"llm-adapters {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
