"""What a GPU does with this project, in one command and a few minutes: a Markdown report.

    python benchmarks/gpu_check.py --out docs/gpu-check.md          # on a machine with a CUDA GPU

Tiny models built from configs (nothing is downloaded) and seeded synthetic word problems (no data needed):
- every method of the family fine-tunes 4 steps in bf16 (`precision: bf16`, where the GPU has it, else fp16) and
  evaluates with `--device cuda`, with its peak GPU memory;
- the engine's batch invariance on CUDA (`--check-invariance`: each question again alone, no drafts), in the
  evaluation dtype: CUDA kernels pick their order of additions by the batch's shape, so this is a measurement;
- a 4-bit base (QLoRA: bitsandbytes NF4) where bitsandbytes is installed, skipped with the reason where not.
Each check that fails is reported with its error and the others go on. On a machine without CUDA the script
stops in one line; `--cpu` runs the same checks on the CPU in fp32 (how the test suite checks the script itself).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

SMALL = {"r": 4, "bottleneck_size": 16, "num_virtual_tokens": 4}


def _peak(run: Callable[[], Any], cuda: bool) -> tuple[Any, float, float]:
    """(result, seconds, peak GPU memory in MiB; 0 on the CPU) of `run`."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run()
    if cuda:
        torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu-check.md", help="the Markdown report")
    parser.add_argument("--model", default="tiny-llama", help="a tiny built-in model (tiny-llama, tiny-qwen2, ...)")
    parser.add_argument("--questions", type=int, default=24, help="held-out questions per evaluation")
    parser.add_argument("--cpu", action="store_true", help="the same checks on the CPU in fp32 (tests the script)")
    args = parser.parse_args()

    import torch

    cuda = not args.cpu
    if cuda and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (torch {torch.__version__}); run it on a machine with one",
              file=sys.stderr)
        return 2
    from llm_adapters.data.builders import SyntheticOptions, build_synthetic_arithmetic
    from llm_adapters.demo import SYNTHETIC_TASK
    from llm_adapters.eval import EvalConfig, evaluate
    from llm_adapters.files import write_json_atomic, write_text_atomic
    from llm_adapters.methods import METHODS, load_adapter
    from llm_adapters.models import load_model
    from llm_adapters.train import finetune, load_config

    precision = "fp32" if not cuda else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[precision]
    device = "cuda" if cuda else "cpu"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    train = work / "train.json"
    write_json_atomic(train, build_synthetic_arithmetic(SyntheticOptions(n=64, seed=1, split="train")).records)
    test_file = work / "data" / SYNTHETIC_TASK.relpath
    write_json_atomic(test_file, build_synthetic_arithmetic(SyntheticOptions(n=args.questions, seed=2,
                                                                             split="test")).records)
    rows, notes = [], []

    def evaluation(model: Any, tokenizer: Any, adapter: str | None, out: Path, **fields: Any) -> dict[str, Any]:
        config = EvalConfig(base_model=args.model, adapter=adapter, data_dir=str(work / "data"), output_dir=str(out),
                            device=device, dtype=dtype, batch_size=8, progress=False, **fields)
        return evaluate(model, tokenizer, config, tasks=[SYNTHETIC_TASK])["tasks"][SYNTHETIC_TASK.name]

    for method in METHODS:
        row = {"check": f"{method}: fine-tune 4 steps ({precision}), evaluate ({device}, {dtype})"}
        try:
            adapter_spec = {"method": method, **{k: v for k, v in SMALL.items() if k in METHODS[method].uses}}
            config = load_config(base_model=args.model, data=str(train), output_dir=str(work / method),
                                 adapter=adapter_spec, template="alpaca", precision=precision, batch_size=8,
                                 micro_batch_size=4, max_steps=4, warmup_steps=0, learning_rate=1e-3,
                                 progress=False)
            run, train_seconds, train_peak = _peak(lambda: finetune(config), cuda)
            model, tokenizer = load_model(args.model, device=device, dtype=dtype)
            model = load_adapter(model, run, base_model=args.model)
            summary, eval_seconds, eval_peak = _peak(lambda: evaluation(model, tokenizer, str(run),
                                                                        work / f"{method}-eval"), cuda)
            row.update(result=f"ok: accuracy {100 * summary['accuracy']:.1f} % of {summary['n']}",
                       seconds=f"{train_seconds:.1f} + {eval_seconds:.1f}",
                       memory=f"{train_peak:.0f} / {eval_peak:.0f}")
            del model
        except Exception as error:  # one failing check is reported; the others go on
            row.update(result=f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            notes.append(f"{method}:\n```\n{traceback.format_exc()[-2000:]}\n```")
        rows.append(row)
        if cuda:
            torch.cuda.empty_cache()

    row = {"check": f"engine on {device} in {dtype}: batch 8 with drafts vs each question alone without"}
    try:
        model, tokenizer = load_model(args.model, device=device, dtype=dtype)
        summary, seconds, peak = _peak(lambda: evaluation(model, tokenizer, None, work / "invariance",
                                                          check_invariance=args.questions), cuda)
        check = summary["invariance"]
        row.update(result=f"{check['identical']}/{check['questions']} answers identical alone",
                   seconds=f"{seconds:.1f}", memory=f"{peak:.0f}")
        del model
    except Exception as error:
        row.update(result=f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
        notes.append(f"invariance:\n```\n{traceback.format_exc()[-2000:]}\n```")
    rows.append(row)

    row = {"check": "4-bit base (bitsandbytes NF4, QLoRA): lora, 4 steps"}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        row.update(result="skipped: bitsandbytes is not installed (pip install bitsandbytes)")
    else:
        try:
            model, tokenizer = load_model(args.model, dtype="float32")
            folder = work / "base"
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            config = load_config(base_model=str(folder), data=str(train), output_dir=str(work / "qlora"),
                                 adapter={"method": "lora", "r": 4}, template="alpaca", load_in_4bit=True,
                                 precision=precision, batch_size=8, micro_batch_size=4, max_steps=4,
                                 warmup_steps=0, progress=False)
            _, seconds, peak = _peak(lambda: finetune(config), cuda)
            row.update(result="ok", seconds=f"{seconds:.1f}", memory=f"{peak:.0f}")
        except Exception as error:
            row.update(result=f"FAILED: {type(error).__name__}: {str(error).splitlines()[0][:200]}")
            notes.append(f"4-bit:\n```\n{traceback.format_exc()[-2000:]}\n```")
    rows.append(row)

    from llm_adapters.provenance import provenance

    machine = provenance(device=device, dtype=dtype)
    where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}" if cuda else "the CPU (--cpu"
    lines = [f"# GPU check ({_dt.date.today().isoformat()})", "",
             f"`python benchmarks/gpu_check.py --out {args.out}{' --cpu' if not cuda else ''}` on {where}, torch "
             f"{torch.__version__}, {platform.platform()}), model {args.model}, {args.questions} held-out synthetic "
             "questions.", "",
             "| check | result | seconds (train + eval) | peak GPU MiB (train / eval) |", "|---|---|---:|---:|"]
    lines += [f"| {r['check']} | {r['result']} | {r.get('seconds', '')} | {r.get('memory', '')} |" for r in rows]
    lines += ["", f"Versions: {machine.get('versions')}", ""]
    if notes:
        lines += ["## Failures", "", *notes]
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if any(r["result"].startswith("FAILED") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
