"""Training throughput: our `finetune` pipeline against the original recipe on plain transformers + PEFT.

    .venv/bin/python benchmarks/train_throughput.py                    # commonsense data, ~12 min on 2 CPU cores
    .venv/bin/python benchmarks/train_throughput.py --data math        # Math10K-style data
    .venv/bin/python benchmarks/train_throughput.py --data synthetic --rounds 2 --no-memory   # a quick look

Both train the embedded SmolLM2-135M with the paper's LoRA (r 32, alpha 64, dropout 0.05 on q/k/v/up/down),
global batch 16, micro-batch 4, AdamW, fp32 (and (a16): bf16 where the CPU has bf16 units), on the same records in the original training template, in one
process. `--data` picks the records: `commonsense` (the Commonsense170K recipe of `data build commonsense`, up to
100 per task, shuffled: short prompts, a label as the response), `math` (`data build math`: GSM8K, MAWPS, AQuA
rationales, lengths vary most) or `synthetic` (the demo's word problems: uniform lengths, the least padding).
The two data builders read `--data-dir` (default ../shared/datasets/llm-adapters).
  (a) ours: `make_trainer` of llm_adapters.train.trainer (length-grouped micro-batches, right padding, logits only at
      label positions, loss on the response);
  (b) the original recipe rebuilt: `get_peft_model` + Trainer, the full text tokenised at once with labels = ids
      (loss on every token, the original's default), DataCollatorForSeq2Seq padding each random micro-batch of 4
      to its longest (left padding, as the original), no length grouping.
  (a') ours with --train-on-inputs, the same loss as (b): the gain from batching alone.
`--batching packed` makes (a) and (a') pack each micro-batch into one row instead of grouping lengths.
Timings on a shared machine drift and jump when other work starts, so the pipelines alternate on disjoint
subsets of a few optimiser steps each (b a a' | a' a b | ...; (a) groups lengths within each subset): the
totals are summed over the rounds, and the ratio is also given as the median of the per-round ratios, which
one disturbed round cannot move. Tokens/s counts real tokens only (no padding). Peak RSS of each pipeline is
measured in a child process of its own (the RSS high-water mark of one process cannot be split between phases).
The FLOP/s fraction divides (a)'s model FLOP/s (frozen base: 4 x body parameters per token, forward and input
gradient; 4 x LM-head parameters per token where logits are computed; 6 x LoRA parameters per token; attention
scores left out; nominal, as if every example ran in full, although the shared prompt prefix runs once) by a
dense 2048x2048 fp32 matmul's FLOP/s, measured between the rounds in this process.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from llm_adapters.data.builders.commonsense import CommonsenseOptions, build_commonsense  # noqa: E402
from llm_adapters.data.builders.math import MathOptions, build_math  # noqa: E402
from llm_adapters.data.builders.synthetic import SyntheticOptions, generate_problems  # noqa: E402
from llm_adapters.data.templates import build_training_text  # noqa: E402
from llm_adapters.methods import attach, count_parameters  # noqa: E402
from llm_adapters.models import EMBEDDED, load_model  # noqa: E402
from llm_adapters.train.trainer import make_trainer  # noqa: E402
from llm_adapters.train import load_config  # noqa: E402
from llm_adapters.train.batches import encode_records  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = {"a": "ours", "a'": "ours, loss on all tokens", "b": "original recipe",
             "a16": "ours, precision bf16 (the CPU's bf16 units)"}


def matmul_flops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start)


class Ours:
    """Pipeline (a), (a') or (a16): the pieces `finetune` uses, on a subset of records at a time; bf16 as
    `finetune` runs it (the base in bf16, the adapter's fp32 master weights, autocast, the loss in fp32)."""

    def __init__(self, train_on_inputs: bool, workdir: Path, batching: str, precision: str = "fp32"):
        self.config = load_config(base_model=EMBEDDED, adapter="paper-lora", data="unused", template="original",
                                  output_dir=str(workdir), num_epochs=1, batch_size=16, micro_batch_size=4,
                                  warmup_steps=0, batching=batching, precision=precision,
                                  train_on_inputs=train_on_inputs, save_steps=10_000, logging_steps=1000)
        self.precision = precision
        model, self.tokenizer = load_model(EMBEDDED, dtype="bfloat16" if precision == "bf16" else "float32")
        model.config.use_cache = False
        torch.manual_seed(0)
        self.model = attach(model, "paper-lora")
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()  # fp32 master weights, as finetune keeps them
        self.kept_fraction = []  # share of tokens whose logits were computed

    def train(self, records: list[dict]) -> tuple[int, float]:
        examples, stats = encode_records(records, self.tokenizer, template="original", cutoff_len=256,
                                         train_on_inputs=self.config.train_on_inputs)
        trainer = make_trainer(self.config, self.model, self.tokenizer, examples, [],
                               Path(self.config.output_dir) / "checkpoints", accumulation=4, precision=self.precision)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        self.kept_fraction.append(stats.label_tokens / stats.tokens)
        return stats.tokens, seconds


class Original:
    """Pipeline (b): finetune.py of LLM-Adapters on today's transformers + PEFT."""

    def __init__(self, workdir: Path):
        from peft import LoraConfig, get_peft_model
        from transformers import DataCollatorForSeq2Seq, TrainingArguments

        model, self.tokenizer = load_model(EMBEDDED)
        model.config.use_cache = False
        self.tokenizer.pad_token_id = 0  # finetune.py: pad id 0, left padding, also in training
        self.tokenizer.padding_side = "left"
        torch.manual_seed(0)
        self.model = get_peft_model(model, LoraConfig(
            r=32, lora_alpha=64, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]))
        self.collator = DataCollatorForSeq2Seq(self.tokenizer, padding=True, return_tensors="pt")
        self.args = TrainingArguments(
            output_dir=str(workdir), per_device_train_batch_size=4, gradient_accumulation_steps=4,
            num_train_epochs=1, learning_rate=3e-4, warmup_steps=0, optim="adamw_torch", logging_steps=1000,
            save_strategy="no", report_to="none", disable_tqdm=True, train_sampling_strategy="random")

    def _tokenize(self, record: dict) -> dict:
        prompt, response = build_training_text(record["instruction"], record["input"], record["output"])
        result = self.tokenizer(prompt + response, truncation=True, max_length=256, padding=False)
        if result["input_ids"][-1] != self.tokenizer.eos_token_id and len(result["input_ids"]) < 256:
            result["input_ids"].append(self.tokenizer.eos_token_id)
            result["attention_mask"].append(1)
        result["labels"] = list(result["input_ids"])  # train_on_inputs=True
        return dict(result)

    def train(self, records: list[dict]) -> tuple[int, float]:
        from transformers import Trainer

        examples = [self._tokenize(r) for r in records]
        trainer = Trainer(model=self.model, args=self.args, train_dataset=examples, data_collator=self.collator)
        start = time.perf_counter()
        trainer.train()
        return sum(len(e["input_ids"]) for e in examples), time.perf_counter() - start


def make_pipeline(name: str, workdir: Path, batching: str):
    if name == "b":
        return Original(workdir / "b")
    return Ours(name == "a'", workdir / name, batching, precision="bf16" if name == "a16" else "fp32")


def records_for(data: str, n: int, data_dir: str) -> list[dict]:
    if data == "synthetic":
        return [p.record() for p in generate_problems(SyntheticOptions(n=n, seed=0, split="train"))]
    build, options = ((build_commonsense, CommonsenseOptions(max_per_task=100, data_dir=data_dir))
                      if data == "commonsense" else (build_math, MathOptions(max_per_source=400, data_dir=data_dir)))
    records = build(options).records
    if len(records) < n:
        raise SystemExit(f"--data {data}: {len(records)} records built, {n} needed (--rounds x --examples-per-round)")
    return records[:n]


def peak_rss_gib() -> float:
    """This process's RSS high-water mark. (Not ru_maxrss: a child forked from a large parent inherits the
    parent's mark across exec.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20  # KiB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def peak_rss_child(name: str, examples: int, data: str, data_dir: str, batching: str) -> float:
    """Peak RSS (GB) of a fresh process that loads the model and trains pipeline `name` on `examples` records."""
    result = subprocess.run([sys.executable, __file__, "--memory-child", name, "--examples-per-round", str(examples),
                             "--data", data, "--data-dir", data_dir, "--batching", batching],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", choices=("commonsense", "math", "synthetic"), default="commonsense",
                        help="training records (default: commonsense)")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "llm-adapters"),
                        help="LLM-Adapters data folder, for --data commonsense / math")
    parser.add_argument("--batching", choices=("length", "packed"), default="length",
                        help="batching of (a) and (a'), as finetune --batching (default: length)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the pipelines (default: 3)")
    parser.add_argument("--examples-per-round", type=int, default=64,
                        help="records per pipeline per round, a multiple of 16 (default: 64)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS child processes")
    parser.add_argument("--no-bf16", action="store_true", help="leave out (a16), bf16 on a CPU with bf16 units")
    parser.add_argument("--memory-child", choices=sorted(PIPELINES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="train-throughput-"))

    if args.memory_child:
        records = records_for(args.data, args.examples_per_round, args.data_dir)
        make_pipeline(args.memory_child, workdir, args.batching).train(records)
        print(peak_rss_gib())
        return

    records = records_for(args.data, args.rounds * args.examples_per_round, args.data_dir)
    from llm_adapters.models import cpu_has_native_bf16

    names = ("b", "a", "a'", "a16") if cpu_has_native_bf16() and not args.no_bf16 else ("b", "a", "a'")
    pipelines = {name: make_pipeline(name, workdir, args.batching) for name in names}
    totals = {name: [0, 0.0] for name in pipelines}
    per_round: dict[str, list[float]] = {name: [] for name in pipelines}  # tokens/s
    flops, flops16 = [matmul_flops()], [matmul_flops(dtype=torch.bfloat16)]
    for round_ in range(args.rounds):
        subset = records[round_ * args.examples_per_round:(round_ + 1) * args.examples_per_round]
        order = list(pipelines) if round_ % 2 == 0 else list(reversed(pipelines))
        for name in order:
            tokens, seconds = pipelines[name].train(subset)
            totals[name][0] += tokens
            totals[name][1] += seconds
            per_round[name].append(tokens / seconds)
            print(f"round {round_ + 1} ({name}): {tokens} tokens in {seconds:.1f} s = {tokens / seconds:.1f} tok/s",
                  flush=True)
        flops.append(matmul_flops())
        flops16.append(matmul_flops(dtype=torch.bfloat16))

    speed = {name: tokens / seconds for name, (tokens, seconds) in totals.items()}
    ours = pipelines["a"]
    base = ours.model.get_base_model()
    head = base.get_output_embeddings().weight.numel()
    counts = count_parameters(ours.model)
    body = counts["total"] - counts["trainable"] - head  # the embedding lookup itself costs no FLOPs
    kept = statistics.mean(ours.kept_fraction)
    flops_per_token = 4 * body + 6 * counts["trainable"] + 4 * head * kept
    machine = statistics.median(flops)

    print(f"\n--data {args.data}, --batching {args.batching}: {args.rounds} rounds x {args.examples_per_round} "
          f"records, global batch 16, micro-batch 4, fp32, "
          f"{torch.get_num_threads()} threads")
    print("| pipeline | real tokens | seconds | tokens/s | vs (b) | vs (a) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        tokens, seconds = totals[name]
        print(f"| ({name}) {PIPELINES[name]} | {tokens} | {seconds:.1f} | {speed[name]:.1f} | "
              f"{speed[name] / speed['b']:.2f}x | {speed[name] / speed['a']:.2f}x |")
    median_ratio = {name: statistics.median(x / y for x, y in zip(per_round[name], per_round["b"]))
                    for name in names if name != "b"}
    if "a16" in names:
        over_fp32 = statistics.median(x / y for x, y in zip(per_round["a16"], per_round["a"]))
        print(f"\nbf16 (a16): {speed['a16'] / speed['a']:.2f}x ours in fp32 over the totals, {over_fp32:.2f} as the "
              f"median of the rounds (target >= 1.7); {speed['a16'] / speed['b']:.2f}x the original recipe "
              f"({median_ratio['a16']:.2f} median; target >= 2.5); bf16 matmul 2048^2: median "
              f"{statistics.median(flops16) / 1e9:.1f} GFLOP/s (min {min(flops16) / 1e9:.1f}, max "
              f"{max(flops16) / 1e9:.1f})")
    inputs_variant = median_ratio["a'"]
    print(f"\nratio (a)/(b): {speed['a'] / speed['b']:.2f} over the totals, {median_ratio['a']:.2f} as the median "
          f"of the rounds (a'/b: {inputs_variant:.2f}); target >= 1.5")
    print(f"dense fp32 matmul 2048^2: median {machine / 1e9:.1f} GFLOP/s "
          f"(min {min(flops) / 1e9:.1f}, max {max(flops) / 1e9:.1f})")
    print(f"(a) model FLOP/s: {flops_per_token * speed['a'] / 1e9:.1f} GFLOP/s = "
          f"{100 * flops_per_token * speed['a'] / machine:.0f} % of the matmul rate "
          f"({flops_per_token / 1e6:.0f} MFLOP per token; logits at {100 * kept:.0f} % of tokens)")
    print(f"peak RSS of this process (all three pipelines loaded): {peak_rss_gib():.2f} GiB")
    if not args.no_memory:
        for name in ("b", "a"):
            print(f"peak RSS, ({name}) alone in a fresh process, {args.examples_per_round} records: "
                  f"{peak_rss_child(name, args.examples_per_round, args.data, args.data_dir, args.batching):.2f} GiB",
                  flush=True)
    print(json.dumps({"tokens_per_s": speed, "ratio_a_b": speed["a"] / speed["b"], "median_ratio": median_ratio,
                      "matmul_gflops": machine / 1e9, "matmul_bf16_gflops": statistics.median(flops16) / 1e9}))


if __name__ == "__main__":
    main()
