"""Training throughput with 1 and 2 processes on this machine's CPU (DDP over gloo), interleaved A B A B.

    PYTHONPATH=src .venv/bin/python benchmarks/ddp_scaling.py [--model smollm2-135m] [--rounds 2] [--steps 6]

Each run is `llm-adapters finetune` (paper-lora, synthetic word problems, global batch 8, micro-batch 4 per
process) started by `--nproc-per-node N`; the threads are split between the processes (2 cores: 2 x 1 against
1 x 2). Real tokens/s = the run's label-carrying and prompt tokens (tokens per step x steps, from the manifest)
over the Trainer's train_runtime. On 2 cores the gain is small: the point is that the multi-process path runs and
what it costs here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(processes: int, model: str, steps: int, data: Path, out: Path) -> float:
    threads = max(1, (os.cpu_count() or 2) // processes)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "llm_adapters", "finetune", "--base-model", model, "--adapter", "paper-lora",
               "--data", str(data), "--output-dir", str(out), "--batch-size", "8", "--micro-batch-size", "4",
               "--max-steps", str(steps), "--warmup-steps", "0", "--template", "alpaca", "--no-progress",
               "--save-steps", "1000", "--nproc-per-node", str(processes)]
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    training = json.loads((out / "manifest.json").read_text())["training"]
    return training["tokens_per_step"] * training["steps"] / training["train_runtime_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=2, help="A B pairs (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per run (default: %(default)s)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from llm_adapters.data.builders import SyntheticOptions, build_synthetic_arithmetic

    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "train.json"
        build_synthetic_arithmetic(SyntheticOptions(n=8 * args.steps, seed=0), out=data.with_suffix(""))
        rates: dict[int, list[float]] = {1: [], 2: []}
        for round_ in range(args.rounds):
            for processes in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                rate = _run(processes, args.model, args.steps, data, Path(folder) / f"r{round_}-p{processes}")
                rates[processes].append(rate)
                print(f"round {round_ + 1}, {processes} process(es): {rate:.1f} real tokens/s", flush=True)
    one, two = (statistics.median(rates[p]) for p in (1, 2))
    print(json.dumps({"model": args.model, "steps": args.steps, "tokens_per_s_1_process": round(one, 1),
                      "tokens_per_s_2_processes": round(two, 1), "ratio_2_over_1": round(two / one, 3),
                      "rounds": rates}, indent=1))


if __name__ == "__main__":
    main()
