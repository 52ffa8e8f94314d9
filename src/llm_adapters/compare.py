"""The base model and each adapter answering the same prompts, side by side: `llm-adapters generate` and the web
UI's Compare tab.

The answers are the evaluation engine's (`eval.stream.generate_batch`: greedy, KV cache, batched): a prompt gets
the tokens `model.generate` gives it alone. Each model sees its own template (`data/templates.py`): the one given,
else for an adapter the one it was trained with (its manifest.json), else for the base the adapters' common one,
else `original`. With `--task`, the task's stop rule ends an answer once it is settled and its extraction rule
reads the answer (and, for a benchmark question, whether it is right); without, a response runs to EOS or the
budget.

Example:
    >>> rows = generate(GenerateConfig(base_model="tiny-llama", prompt="What is 2 + 3?", max_new_tokens=8))
"""
from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from llm_adapters.data.tasks import TASKS, Task
from llm_adapters.data.templates import TEMPLATES, build_prompt
from llm_adapters.errors import MissingInputError, UserError

BASE = "base"
# A free prompt has no answer type: this record only carries the budget (the stop rule is off without --task).
_FREE = Task("prompt", "prompt", "math", "number", max_new_tokens=256)


@dataclass(frozen=True)
class GenerateConfig:
    """Which models answer which prompts, and how."""

    base_model: str = field(metadata={"help": "built-in name (smollm2-135m, tiny-llama...), local folder, .gguf "
                                              "file or hub id"})
    adapter: tuple[str, ...] = field(default=(), metadata={
        "help": "adapter folders (or fine-tune / study run folders), each answering beside the base"})
    prompt: str | None = field(default=None, metadata={"help": "one instruction"})
    prompts: str | None = field(default=None, metadata={
        "help": "a file of instructions: JSONL or a JSON list of {instruction, input?} records, or one instruction "
                "a line"})
    template: str | None = field(default=None, metadata={
        "help": f"prompt template: {', '.join(TEMPLATES)} (default: each adapter's own, from its manifest.json; "
                "the base: the adapters' common one, else original)"})
    task: str | None = field(default=None, metadata={
        "help": "a benchmark task (gsm8k, boolq...) whose stop rule ends an answer once settled and whose rule "
                "extracts it (default: none, answers run to EOS or the budget)"})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "generation budget (default: the task's, else 256)"})
    batch_size: int = field(default=16, metadata={"help": "prompts decoding together"})
    json: bool = field(default=False, metadata={
        "help": "print one JSON object a line: instruction, input, prompt, model, template, generation, n_tokens "
                "(and answer with --task)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present, else CPU), cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on a GPU that has it, else fp32), float32, "
                                                         "bfloat16 (on a CPU with bf16 units: bf16 products, fp32 "
                                                         "activations, as evaluate), float16"})
    allow_base_mismatch: bool = field(default=False, metadata={
        "help": "load an adapter onto another base model than the one it was trained on"})
    trust_remote_code: bool = field(default=False, metadata={"help": "let the checkpoint run its own Python code"})

    def __post_init__(self) -> None:
        if isinstance(self.adapter, str):
            object.__setattr__(self, "adapter", tuple(a for a in self.adapter.split(",") if a))
        problems = []
        if (self.prompt is None) == (self.prompts is None):
            problems.append("give one of --prompt TEXT or --prompts FILE")
        if self.template is not None and self.template not in TEMPLATES:
            problems.append(f"template {self.template!r} is not one of {', '.join(TEMPLATES)}")
        if self.task is not None and self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if problems:
            raise UserError("; ".join(problems))


def read_prompts(path: str | Path) -> list[dict[str, str]]:
    """Instruction records from a JSON list or JSONL file ({instruction, input?}), or one instruction a line.

    Raises:
        MissingInputError: no such file.
        UserError: a malformed JSON file or a record without an instruction (file, record, field named).
    """
    from llm_adapters.data.io import read_records

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no such prompts file: {path}")
    text = path.read_text(encoding="utf-8")
    if text.lstrip()[:1] in ("{", "["):
        return [{"instruction": r["instruction"], "input": r.get("input", "")}
                for r in read_records(path, required_fields=("instruction",))]
    records = [{"instruction": line.strip(), "input": ""} for line in text.splitlines() if line.strip()]
    if not records:
        raise UserError(f"{path}: no prompts in it")
    return records


def adapter_template(adapter: str | Path) -> str | None:
    """The template an adapter was trained with (its run's manifest.json), or None."""
    from llm_adapters.methods import adapter_folder

    try:
        manifest = json.loads((adapter_folder(adapter) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("config", {}).get("template")


def templates_for(base_template: str | None, adapters: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Label (`base` or the adapter's path) -> template: the one given, else each adapter's own, else for the
    base the adapters' common one, else `original`."""
    own = {adapter: adapter_template(adapter) for adapter in adapters}
    common = {t for t in own.values() if t}
    base = base_template or (common.pop() if len(common) == 1 else "original")
    return {BASE: base, **{a: base_template or own[a] or "original" for a in adapters}}


def load_models(base_model: str, adapters: tuple[str, ...] | list[str], *, device: str = "auto",
                dtype: str = "auto", allow_base_mismatch: bool = False, trust_remote_code: bool = False
                ) -> Iterator[tuple[str, Any, Any]]:
    """(label, model, tokenizer): the base, then each adapter on a fresh copy of the base, one after the other
    (the previous one can be dropped by then)."""
    from llm_adapters.methods import adapter_folder, load_adapter
    from llm_adapters.models import load_dtype, load_model, resolve_device

    # bf16 on a CPU with bf16 units: an fp32 model whose products run in bf16 (`answer(..., products=True)`)
    model, tokenizer = load_model(base_model, device=device, dtype=load_dtype(resolve_device(device), dtype),
                                  trust_remote_code=trust_remote_code)
    model.eval()
    yield BASE, model, tokenizer
    for adapter in adapters:
        yield adapter, load_adapter(copy.deepcopy(model), adapter_folder(adapter), base_model=base_model,
                                    allow_base_mismatch=allow_base_mismatch), tokenizer


def answer(model: Any, tokenizer: Any, records: list[dict[str, str]], template: str, task: str | Task | None = None,
           max_new_tokens: int | None = None, batch_size: int = 16, products: bool = False) -> list[dict[str, Any]]:
    """One model's greedy answers to instruction records (the evaluation engine's decoding; `products`: with bf16
    products, as `evaluate --dtype bfloat16` on a CPU with bf16 units).

    Returns:
        Per record: prompt (the exact text the model was given), generation, n_tokens, and with a task the
        extracted answer (`answer`) and, when the record has a gold `answer`, `correct`.
    """
    from llm_adapters.eval.extract import extract_answer, is_correct
    from llm_adapters.eval import DecodeConfig, generate_stream

    record_task = TASKS[task] if isinstance(task, str) else task
    prompts = [build_prompt(r["instruction"], r.get("input", ""), template=template, tokenizer=tokenizer)
               for r in records]
    decode = DecodeConfig(batch_size=batch_size, max_new_tokens=max_new_tokens, stop_rules=record_task is not None)
    from llm_adapters.eval.packed import bf16_products

    with bf16_products(model) if products else contextlib.nullcontext():
        generations = dict(generate_stream(model, tokenizer, prompts, record_task or _FREE, decode, template))
    rows = [{"prompt": prompt, "generation": generations[k].text, "n_tokens": generations[k].n_tokens}
            for k, prompt in enumerate(prompts)]
    if record_task is not None:
        for row, record in zip(rows, records):
            row["answer"] = extract_answer(record_task, row["generation"])
            if "answer" in record:
                row["correct"] = is_correct(record_task, row["answer"], str(record["answer"]))
    return rows


def generate(config: GenerateConfig) -> list[dict[str, Any]]:
    """Every model's answers to every prompt, as rows in prompt order, the base first for each prompt.

    Raises:
        UserError: bad settings, a missing or malformed prompts file, an adapter that does not load.
    """
    from llm_adapters.models import cpu_bf16_products, resolve_device

    records = [{"instruction": config.prompt, "input": ""}] if config.prompt is not None else \
        read_prompts(config.prompts)
    templates = templates_for(config.template, config.adapter)
    by_model: dict[str, list[dict[str, Any]]] = {}
    products = cpu_bf16_products(resolve_device(config.device), config.dtype)
    for label, model, tokenizer in load_models(config.base_model, config.adapter, device=config.device,
                                               dtype=config.dtype, allow_base_mismatch=config.allow_base_mismatch,
                                               trust_remote_code=config.trust_remote_code):
        by_model[label] = answer(model, tokenizer, records, templates[label], config.task, config.max_new_tokens,
                                 config.batch_size, products=products)
        del model
    return [{"instruction": record["instruction"], "input": record.get("input", ""), "model": label,
             "template": templates[label], **rows[k]}
            for k, record in enumerate(records) for label, rows in by_model.items()]


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The rows as text: each instruction, then each model's answer under its name."""
    lines: list[str] = []
    for row in rows:
        if row["model"] == BASE:
            lines += ["", f"### {row['instruction']}" + (f"\n{row['input']}" if row["input"] else "")]
        extracted = f"  [answer: {row['answer']}]" if "answer" in row else ""
        lines.append(f"--- {row['model']} ({row['template']}, {row['n_tokens']} tokens){extracted}\n"
                     f"{row['generation'].strip()}")
    return "\n".join(lines).lstrip("\n") + "\n"
