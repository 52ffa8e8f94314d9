"""Evaluation throughput: our engine against the original protocol and plain `generate`, in one process.

    PYTHONPATH=src .venv/bin/python benchmarks/eval_throughput.py            # ~30 min on a quiet 2-core CPU

Same model, same prompts (the original evaluation template), first N GSM8K and BoolQ questions:
  (a) ours:     `generate_batch`, batches sorted by length, greedy, KV cache, stop rules, finished rows dropped;
  (b) original: batch 1, 4-beam search, no KV cache, 256 / 32 new tokens (evaluate.py's settings);
  (c) generate: plain `model.generate`, batch 1, greedy, KV cache, 256 / 32 new tokens.
All three are scored with the default extraction rules. (b) costs minutes per GSM8K question on a CPU, so it
runs on the first questions until its time budget is spent (at least one per task); its rate is measured on
those, and the table says on how many. Timings vary 3-4x with other load on the machine: compare the ratios of
one run, not runs of different days.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from llm_adapters.data.io import load_task_data
from llm_adapters.data.tasks import TASKS, Task
from llm_adapters.data.templates import build_prompt
from llm_adapters.eval.extract import extract_answer, is_correct
from llm_adapters.eval.decoding import DecodeConfig, plan_batches, prompt_lengths
from llm_adapters.eval.stream import generate_batch
from llm_adapters.models import load_model

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """One system on one task: how many examples, how long, how many right, how many tokens."""

    system: str
    task: str
    n: int = 0
    seconds: float = 0.0
    correct: int = 0
    tokens: int = 0
    scored: int | None = None  # examples the accuracy is over, when not n (rate-weighted totals)

    @property
    def rate(self) -> float:
        return self.n / self.seconds if self.seconds else 0.0


def _score(run: Run, task: Task, texts: list[str], golds: list[str]) -> None:
    run.correct += sum(is_correct(task, extract_answer(task, t), g) for t, g in zip(texts, golds))


def ours(model: Any, tokenizer: Any, task: Task, prompts: list[str], golds: list[str], batch_size: int) -> Run:
    run = Run("ours", task.name, len(prompts))
    config = DecodeConfig.for_protocol("fast", batch_size)
    start = time.perf_counter()
    texts: dict[int, str] = {}
    for batch in plan_batches(prompt_lengths(tokenizer, prompts), batch_size):
        for index, generation in zip(batch, generate_batch(model, tokenizer, [prompts[i] for i in batch], task,
                                                            config)):
            texts[index] = generation.text
            run.tokens += generation.n_tokens
    run.seconds = time.perf_counter() - start
    _score(run, task, [texts[i] for i in range(len(prompts))], golds)
    return run


def one_by_one(system: str, step: Callable[[str], tuple[str, int]], task: Task, prompts: list[str],
               golds: list[str], budget: float | None) -> Run:
    """Run `step` on each prompt in order, stopping once `budget` seconds are spent (after at least one)."""
    run = Run(system, task.name)
    texts = []
    start = time.perf_counter()
    for prompt in prompts:
        text, tokens = step(prompt)
        texts.append(text)
        run.n, run.tokens = run.n + 1, run.tokens + tokens
        run.seconds = time.perf_counter() - start
        print(f"  {system} {task.name}: {run.n}/{len(prompts)} in {run.seconds:.0f} s", flush=True)
        if budget is not None and run.seconds > budget:
            break
    _score(run, task, texts, golds[:run.n])
    return run


def original_step(model: Any, tokenizer: Any, task: Task) -> Callable[[str], tuple[str, int]]:
    config = DecodeConfig("original", batch_size=1, num_beams=4, use_cache=False, stop_rules=False)

    def step(prompt: str) -> tuple[str, int]:
        (generation,) = generate_batch(model, tokenizer, [prompt], task, config)
        return generation.text, generation.n_tokens
    return step


def generate_step(model: Any, tokenizer: Any, task: Task) -> Callable[[str], tuple[str, int]]:
    @torch.no_grad()
    def step(prompt: str) -> tuple[str, int]:
        inputs = tokenizer([prompt], return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=task.max_new_tokens, do_sample=False)
        new = output[0, inputs["input_ids"].shape[1]:]
        return tokenizer.decode(new, skip_special_tokens=True), len(new)
    return step


def _table(runs: list[Run], totals: dict[str, Run]) -> str:
    lines = ["| system | task | examples | seconds | examples/s | accuracy % | tokens |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for run in runs + list(totals.values()):
        scored = run.n if run.scored is None else run.scored
        accuracy = 100 * run.correct / scored if scored else 0.0
        lines.append(f"| {run.system} | {run.task} | {run.n} | {run.seconds:.1f} | {run.rate:.3f} | "
                     f"{accuracy:.1f} | {run.tokens} |")
    return "\n".join(lines)


def _combined(runs: list[Run], sizes: dict[str, int]) -> dict[str, Run]:
    """Per system, the time it would take on all examples of every task (measured rate per task)."""
    totals: dict[str, Run] = {}
    for run in runs:
        total = totals.setdefault(run.system, Run(run.system, "all (rate-weighted)", scored=0))
        total.n += sizes[run.task]
        total.scored += run.n
        total.seconds += sizes[run.task] / run.rate
        total.correct += run.correct
        total.tokens += run.tokens
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "llm-adapters"))
    parser.add_argument("--n-gsm8k", type=int, default=32)
    parser.add_argument("--n-boolq", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--original-budget", type=float, default=300.0,
                        help="seconds per task for the original protocol (it runs at least one question)")
    parser.add_argument("--skip", default="", help="systems to skip, e.g. original,generate")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model)
    model.eval()
    sizes = {"gsm8k": args.n_gsm8k, "boolq": args.n_boolq}
    runs: list[Run] = []
    for name, n in sizes.items():
        task = TASKS[name]
        records = load_task_data(task, args.data_dir).records[:n]
        prompts = [build_prompt(r["instruction"]) for r in records]
        golds = [r["answer"] for r in records]
        if "ours" not in args.skip:
            runs.append(ours(model, tokenizer, task, prompts, golds, args.batch_size))
            print(f"  ours {name}: {runs[-1].n} in {runs[-1].seconds:.0f} s", flush=True)
        if "generate" not in args.skip:
            runs.append(one_by_one("generate", generate_step(model, tokenizer, task), task, prompts, golds, None))
        if "original" not in args.skip:
            runs.append(one_by_one("original", original_step(model, tokenizer, task), task, prompts, golds,
                                   args.original_budget))
    totals = _combined(runs, sizes)
    print(_table(runs, totals))
    rate = {system: total.rate for system, total in totals.items()}
    for other in ("original", "generate"):
        if "ours" in rate and other in rate:
            print(f"ours / {other}: {rate['ours'] / rate[other]:.1f}x examples/s")
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpu": platform.processor() or platform.machine()}
    print(json.dumps(machine))
    if args.output:
        Path(args.output).write_text(json.dumps({"machine": machine, "args": vars(args),
                                                 "runs": [vars(r) for r in runs]}, indent=1))


if __name__ == "__main__":
    main()
