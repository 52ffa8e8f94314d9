"""The main job (`make demo`): evaluate the embedded model, fine-tune it with paper-lora, evaluate again.

Everything runs offline on the embedded SmolLM2-135M-Instruct: seeded synthetic word problems (train split) for
fine-tuning, and a held-out split (no question shared with training, by construction) for evaluation. Each
stage writes into the output folder and is skipped when its result is already there (the same settings and
inputs, by content: rundir.py), so a killed demo resumes; a stage whose settings changed (an edited
configs/demo.yaml) is done again.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llm_adapters.data.builders import SyntheticOptions, build_synthetic_arithmetic
from llm_adapters.data.tasks import Task
from llm_adapters.errors import OutputExistsError, RunMismatchError
from llm_adapters.files import write_json_atomic, write_text_atomic

# A held-out math task over the synthetic test split; scored like the other number tasks.
# 48 new tokens: the longest reference rationale is about 35 tokens, and the stop rule ends most answers earlier.
SYNTHETIC_TASK = Task("synthetic-arithmetic", "synthetic-arithmetic", "math", "number", max_new_tokens=48)


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """Sizes of the demo; the defaults finish in about seven minutes on 2 CPU cores."""

    config: str = dataclasses.field(default="configs/demo.yaml", metadata={"help": "fine-tuning config"})
    output_dir: str = dataclasses.field(default="demo-output", metadata={"help": "results folder"})
    n_test: int = dataclasses.field(default=80, metadata={"help": "held-out problems"})
    batch_size: int = dataclasses.field(default=32, metadata={"help": "evaluation batch size"})


def _build_data(out: Path, config: Any, n_test: int) -> tuple[Path, Path]:
    """Training records (the config's `data`, built if missing) and the held-out test folder."""
    train = Path(config.data)
    if not train.exists():
        n_train = config.max_examples or 400
        build_synthetic_arithmetic(SyntheticOptions(n=n_train, seed=config.seed, split="train"),
                                   out=str(train.with_suffix("")))
    data_dir = out / "data"
    test_file = data_dir / SYNTHETIC_TASK.relpath
    if not test_file.exists():
        test_file.parent.mkdir(parents=True, exist_ok=True)
        result = build_synthetic_arithmetic(SyntheticOptions(n=n_test, seed=config.seed + 1, split="test"))
        write_json_atomic(test_file, result.records)
    return train, data_dir


def _evaluate(model: Any, tokenizer: Any, data_dir: Path, out: Path, config: Any, batch_size: int,
              label: str, adapter: str | None) -> dict[str, Any]:
    from llm_adapters.eval import EvalConfig, evaluate

    print(f"\n== evaluating {label} on {SYNTHETIC_TASK.name} (held out) ==", flush=True)
    # overwrite: a folder of the demo holding other results (another adapter, other settings) is redone.
    settings = EvalConfig(base_model=config.base_model, adapter=adapter, data_dir=str(data_dir), output_dir=str(out),
                          batch_size=batch_size, template=config.template, overwrite=True)
    return evaluate(model, tokenizer, settings, tasks=[SYNTHETIC_TASK])["tasks"][SYNTHETIC_TASK.name]


def _finetune(config: Any) -> None:
    """Train, or find the run finished; the demo's adapter folder holding another run (other settings, or one of
    an earlier version) is trained again."""
    import dataclasses

    from llm_adapters.train import finetune

    try:
        finetune(config)
    except (RunMismatchError, OutputExistsError) as error:
        print(f"{error}\n-> the demo trains it again", flush=True)
        finetune(dataclasses.replace(config, overwrite=True))


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the demo and return {"before": summary, "after": summary, "adapter": path, "table": Markdown}."""
    from llm_adapters.methods import load_adapter
    from llm_adapters.models import load_model
    from llm_adapters.plots import before_after
    from llm_adapters.train import load_config

    out = Path(options.output_dir)
    adapter_dir = out / "adapter"
    config = load_config(options.config, output_dir=str(adapter_dir),
                         data=str(out / "data" / "synthetic-train.json"))
    train_file, data_dir = _build_data(out, config, options.n_test)
    print(f"training data: {train_file}; held-out test: {data_dir / SYNTHETIC_TASK.relpath}", flush=True)

    model, tokenizer = load_model(config.base_model)
    before = _evaluate(model, tokenizer, data_dir, out / "eval-before", config, options.batch_size,
                       "the base model", None)
    del model

    print(f"\n== fine-tuning {config.base_model} with {config.adapter} ==", flush=True)
    _finetune(config)
    model, tokenizer = load_model(config.base_model)
    tuned = load_adapter(model, adapter_dir, base_model=config.base_model)
    after = _evaluate(tuned, tokenizer, data_dir, out / "eval-after", config, options.batch_size,
                      "the fine-tuned model", str(adapter_dir))

    table = _table(before, after, config)
    write_text_atomic(out / "results.md", table + "\n")
    write_json_atomic(out / "results.json", {"before": before, "after": after, "adapter": str(adapter_dir)})
    before_after(("base", "fine-tuned"), (before, after), "held-out synthetic arithmetic", out / "before_after.png")
    print("\n" + table)
    print(f"\nwritten: {out}/results.md, results.json, before_after.png; adapter and loss curve in {adapter_dir}")
    return {"before": before, "after": after, "adapter": str(adapter_dir), "table": table}


def _table(before: dict[str, Any], after: dict[str, Any], config: Any) -> str:
    rows = ["| model | accuracy | 95 % CI | n | seconds |", "|---|---|---|---|---|"]
    for label, summary in (("base", before), (f"+ {config.adapter} (fine-tuned)", after)):
        low, high = summary["ci95"]
        rows.append(f"| {label} | {100 * summary['accuracy']:.1f} % | {100 * low:.1f}–{100 * high:.1f} % | "
                    f"{summary['n']} | {summary['seconds']:.0f} |")
    change = 100 * (after["accuracy"] - before["accuracy"])
    return (f"SmolLM2-135M-Instruct on {before['n']} held-out synthetic word problems\n\n" + "\n".join(rows)
            + f"\n\nchange: {change:+.1f} points")
