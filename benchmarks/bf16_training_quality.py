"""Does bf16 training on the CPU learn what fp32 learns? The demo's LoRA run (configs/demo.yaml: SmolLM2-135M,
paper-lora, synthetic word problems) for 60 optimiser steps, once with `precision: fp32` and once with
`precision: bf16` (base bf16, adapter fp32, autocast), the same seed and data; then both adapters evaluated
the same way (fp32, the demo's 80 held-out problems).

Prints the two loss curves side by side, the final loss (mean of the last 10 logged losses, and its spread), the
accuracy of each with its 95 % Wilson interval, and the paired difference over the same questions (how many
each answers right that the other does not, an exact two-sided sign test on those). Each run's tokens/s too.

    PYTHONPATH=src .venv/bin/python benchmarks/bf16_training_quality.py --out /tmp/bf16-quality
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

from llm_adapters.demo import SYNTHETIC_TASK, _build_data
from llm_adapters.eval import EvalConfig, evaluate
from llm_adapters.methods import load_adapter
from llm_adapters.models import cpu_has_native_bf16, load_model
from llm_adapters.train import finetune, load_config


def _wilson(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _sign_test(a: int, b: int) -> float:
    """Exact two-sided binomial p of a split a : b of the discordant questions at 1/2."""
    n, k = a + b, min(a, b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bf16-quality", help="working folder (runs resume there)")
    parser.add_argument("--steps", type=int, default=60, help="optimiser steps of each run")
    parser.add_argument("--config", default="configs/demo.yaml")
    args = parser.parse_args()
    if not cpu_has_native_bf16():
        print("this CPU has no bf16 units: precision bf16 is refused here", file=sys.stderr)
        return 2
    out = Path(args.out)
    base = load_config(args.config, output_dir=str(out / "fp32"), data=str(out / "data" / "synthetic-train.json"))
    base = dataclasses.replace(base, num_epochs=3, max_steps=args.steps, save_steps=1000, progress=False)
    _, data_dir = _build_data(out, base, 80)
    runs = {}
    for precision in ("fp32", "bf16"):
        config = dataclasses.replace(base, precision=precision, output_dir=str(out / precision))
        start = time.perf_counter()
        finetune(config)
        manifest = json.loads((out / precision / "manifest.json").read_text())
        history = [json.loads(line) for line in (out / precision / "loss_log.jsonl").read_text().splitlines()]
        losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
        model, tokenizer = load_model(config.base_model)
        tuned = load_adapter(model, out / precision, base_model=config.base_model)
        settings = EvalConfig(base_model=config.base_model, adapter=str(out / precision), data_dir=str(data_dir),
                              output_dir=str(out / f"eval-{precision}"), batch_size=32, template=config.template)
        summary = evaluate(tuned, tokenizer, settings, tasks=[SYNTHETIC_TASK])["tasks"][SYNTHETIC_TASK.name]
        predictions = (out / f"eval-{precision}" / SYNTHETIC_TASK.name / "predictions.jsonl").read_text()
        right = {r["index"]: bool(r["correct"]) for r in map(json.loads, predictions.splitlines())}
        runs[precision] = {"losses": losses, "summary": summary, "right": right, "manifest": manifest,
                           "seconds": time.perf_counter() - start}
        del model, tuned

    fp32, bf16 = runs["fp32"], runs["bf16"]
    print("\n| step | fp32 loss | bf16 loss |\n|---:|---:|---:|")
    for (step, a), (_, b) in zip(fp32["losses"], bf16["losses"]):
        print(f"| {step} | {a:.4f} | {b:.4f} |")
    print()
    for name, run in runs.items():
        tail = [loss for _, loss in run["losses"][-10:]]
        s = run["summary"]
        low, high = _wilson(s["correct"], s["n"])
        training = run["manifest"]["training"]
        tokens = training["tokens_per_step"] * training["steps"] / training["train_runtime_s"]
        print(f"{name}: final loss {statistics.mean(tail):.4f} (mean of the last 10 logged, sd "
              f"{statistics.stdev(tail):.4f}), accuracy {100 * s['accuracy']:.1f} % [{100 * low:.1f}-{100 * high:.1f}]"
              f" on {s['n']}, training {training['train_runtime_s']:.0f} s ({tokens:.0f} tokens/s, from tokens per step), run + eval "
              f"{run['seconds']:.0f} s")
    only_fp32 = sum(fp32["right"][i] and not bf16["right"][i] for i in fp32["right"])
    only_bf16 = sum(bf16["right"][i] and not fp32["right"][i] for i in fp32["right"])
    difference = 100 * (bf16["summary"]["accuracy"] - fp32["summary"]["accuracy"])
    print(f"bf16 - fp32: {difference:+.1f} points; right only in fp32 {only_fp32}, only in bf16 {only_bf16}, "
          f"exact sign test p = {_sign_test(only_fp32, only_bf16):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
