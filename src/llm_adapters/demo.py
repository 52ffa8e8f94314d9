"""The main job (`make demo`): evaluate the embedded model, fine-tune it with paper-lora, evaluate again.

Everything runs offline on the embedded SmolLM2-135M-Instruct: seeded synthetic word problems (train split) for
fine-tuning, and a held-out split (no question shared with training, by construction) for evaluation. Each
stage writes into the output folder and is skipped when its result is already there, so a killed demo resumes.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from llm_adapters.data.build_synthetic import SyntheticOptions, build_synthetic_arithmetic
from llm_adapters.data.io import write_json_atomic
from llm_adapters.data.tasks import Task

# A held-out math task over the synthetic test split; scored like the other number tasks.
# 48 new tokens: the longest reference rationale is about 35 tokens, and the stop rule ends most answers earlier.
SYNTHETIC_TASK = Task("synthetic-arithmetic", "synthetic-arithmetic", "math", "number", max_new_tokens=48)


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """Sizes of the demo; the defaults finish in about ten minutes on 2 CPU cores."""

    config: str = "configs/demo.yaml"
    output_dir: str = "demo-output"
    n_test: int = 80
    batch_size: int = 32


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


def _evaluate(model: Any, tokenizer: Any, data_dir: Path, out: Path, template: str, batch_size: int,
              label: str, adapter: str | None) -> dict[str, Any]:
    from llm_adapters.eval.evaluate import evaluate_tasks

    print(f"\n== evaluating {label} on {SYNTHETIC_TASK.name} (held out) ==", flush=True)
    result = evaluate_tasks(model, tokenizer, [SYNTHETIC_TASK], data_dir, out, batch_size=batch_size,
                            template=template, model_name="smollm2-135m", adapter_name=adapter)
    return result["tasks"][SYNTHETIC_TASK.name]


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the demo and return {"before": summary, "after": summary, "adapter": path, "table": Markdown}."""
    from llm_adapters.methods import load_adapter
    from llm_adapters.models import load_model
    from llm_adapters.train import finetune
    from llm_adapters.train_config import load_config

    out = Path(options.output_dir)
    adapter_dir = out / "adapter"
    config = load_config(options.config, output_dir=str(adapter_dir),
                         data=str(out / "data" / "synthetic-train.json"))
    train_file, data_dir = _build_data(out, config, options.n_test)
    print(f"training data: {train_file}; held-out test: {data_dir / SYNTHETIC_TASK.relpath}", flush=True)

    model, tokenizer = load_model(config.base_model)
    before = _evaluate(model, tokenizer, data_dir, out / "eval-before", config.template, options.batch_size,
                       "the base model", None)
    del model

    print(f"\n== fine-tuning {config.base_model} with {config.adapter} ==", flush=True)
    if not (adapter_dir / "manifest.json").exists():
        finetune(config)
    model, tokenizer = load_model(config.base_model)
    tuned = load_adapter(model, str(adapter_dir))
    after = _evaluate(tuned, tokenizer, data_dir, out / "eval-after", config.template, options.batch_size,
                      "the fine-tuned model", str(adapter_dir))

    table = _table(before, after, config)
    (out / "results.md").write_text(table + "\n")
    write_json_atomic(out / "results.json", {"before": before, "after": after, "adapter": str(adapter_dir)})
    _plot(before, after, out / "before_after.png")
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


def _plot(before: dict[str, Any], after: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [100 * before["accuracy"], 100 * after["accuracy"]]
    errors = [[v - 100 * s["ci95"][0] for v, s in zip(values, (before, after))],
              [100 * s["ci95"][1] - v for v, s in zip(values, (before, after))]]
    figure, axis = plt.subplots(figsize=(4, 3.5))
    axis.bar(["base", "fine-tuned"], values, yerr=errors, capsize=6, color=["#999999", "#2a7ab9"])
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title("held-out synthetic arithmetic")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

