"""`FinetuneConfig`: every setting of `llm-adapters finetune`, validated, from YAML and/or `--key value` flags.

A YAML file supplies the values, flags override them; every field is both a YAML key and a flag
(`cutoff_len` / `--cutoff-len`). Unknown keys are errors naming the key and the accepted ones, and every
problem of a config is reported in one ValueError. Checks that depend on the machine (CUDA for bf16, fp16 and
8/4-bit, the architecture for packing) happen when training starts, so a 7B preset validates on a laptop.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llm_adapters.data.templates import TEMPLATES

PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
BATCHING = ("length", "packed", "padded")
# Settings that may change between a killed run and its resumption (the new value wins); any other
# difference would make the resumed run a different run, so it is an error.
RESUME_MAY_CHANGE = ("overwrite", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. Defaults follow the paper's LoRA run (original-system.md A.4/B.6), except
    `train_on_inputs` (the original's default was True) and the precision (fp32; the original used fp16 AMP)."""

    # I/O
    data: str = field(default="", metadata={"help": "training data: LLM-Adapters JSON list, JSONL, or saved HF dataset"})
    output_dir: str = field(default="", metadata={"help": "run folder: adapter, tokenizer, manifest, loss log; "
                                                          "rerunning the same command resumes it"})
    overwrite: bool = field(default=False, metadata={"help": "delete an existing output_dir (finished or foreign)"})
    # model and method
    base_model: str = field(default="smollm2-135m", metadata={"help": "built-in name, local folder or hub id"})
    adapter: str | dict = field(default="paper-lora", metadata={
        "help": "preset (paper-lora, paper-series...), method name, or a mapping of spec fields, e.g. "
                "{preset: paper-lora, r: 16} or {method: series, placement: down_proj}"})
    trust_remote_code: bool = field(default=False, metadata={"help": "let the checkpoint run its own Python code"})
    # data
    template: str = field(default="original", metadata={"help": f"prompt template: {', '.join(TEMPLATES)}"})
    cutoff_len: int = field(default=256, metadata={"help": "max tokens per example, prompt + response + EOS"})
    train_on_inputs: bool = field(default=False, metadata={
        "help": "loss on the prompt tokens too (the original's behaviour); default: response tokens only"})
    val_set_size: int = field(default=0, metadata={"help": "examples held out (seeded) for the validation loss"})
    max_examples: int | None = field(default=None, metadata={
        "help": "use only this many training records (the first after a seeded shuffle); default: all"})
    # optimisation
    num_epochs: float = field(default=3.0, metadata={"help": "passes over the training examples"})
    max_steps: int = field(default=-1, metadata={"help": "stop after this many optimiser steps (overrides epochs)"})
    learning_rate: float = field(default=3e-4, metadata={"help": "peak AdamW learning rate"})
    batch_size: int = field(default=16, metadata={"help": "examples per optimiser step, over all devices"})
    micro_batch_size: int = field(default=4, metadata={
        "help": "examples per forward pass and device; accumulation = batch_size / (micro_batch_size x devices)"})
    warmup_steps: int = field(default=100, metadata={"help": "linear warm-up, in optimiser steps"})
    lr_scheduler: str = field(default="linear", metadata={"help": f"schedule after warm-up: {', '.join(SCHEDULES)}"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0: off)"})
    seed: int = field(default=42, metadata={"help": "seed of the split, the data order, dropout and adapter init"})
    # system
    precision: str = field(default="fp32", metadata={
        "help": "fp32; bf16 or fp16 (base weights in that dtype, adapter fp32, autocast) need a GPU that has them"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations: less memory, slower"})
    load_in_8bit: bool = field(default=False, metadata={"help": "8-bit base weights (bitsandbytes, CUDA only)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "4-bit NF4 base weights (bitsandbytes, CUDA only)"})
    batching: str = field(default="length", metadata={
        "help": "length: micro-batches of similar length, padded to the longest; packed: each micro-batch as one "
                "padding-free row (attention kept inside each example; LLaMA-like architectures); padded: random "
                "micro-batches padded to the longest (the original)"})
    share_prefix: bool = field(default=True, metadata={
        "help": "run the prompt prefix that all rows of a micro-batch share (the template header) once and reuse "
                "its keys/values: same loss and gradients without dropout; with dropout, its dropout mask is "
                "shared by the rows (off for packed batches, prompt learning and gradient checkpointing)"})
    logging_steps: int = field(default=10, metadata={"help": "log the training loss every N optimiser steps"})
    eval_steps: int = field(default=80, metadata={"help": "validation loss every N steps (with val_set_size > 0)"})
    save_steps: int = field(default=80, metadata={"help": "checkpoint every N steps (resume point after a kill)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept while training"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep checkpoints/ after the run finishes"})

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise ValueError("invalid finetune config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def spec(self):
        """The resolved AdapterSpec."""
        from llm_adapters.methods import resolve_spec

        return resolve_spec(self.adapter)


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
_KIND = {name: str(f.type).split(" |")[0] for name, f in FIELDS.items()}  # int, float, bool or str


def _problems(c: FinetuneConfig):
    for name in ("data", "output_dir", "base_model"):
        if not isinstance(getattr(c, name), str) or not getattr(c, name):
            yield f"{name} is required"
    try:
        c.spec
    except (ValueError, TypeError) as error:
        yield f"adapter: {error}"
    for name, choices in (("template", TEMPLATES), ("lr_scheduler", SCHEDULES), ("precision", PRECISIONS),
                          ("batching", BATCHING)):
        if getattr(c, name) not in choices:
            yield f"{name} {getattr(c, name)!r} is not one of {', '.join(choices)}"
    for name in ("cutoff_len", "batch_size", "micro_batch_size", "logging_steps", "eval_steps", "save_steps",
                 "save_total_limit"):
        value = getattr(c, name)
        if not _is_int(value) or value < 1:
            yield f"{name} must be a positive integer, got {value!r}"
    for name in ("val_set_size", "warmup_steps", "seed"):
        if not _is_int(getattr(c, name)) or getattr(c, name) < 0:
            yield f"{name} must be a non-negative integer, got {getattr(c, name)!r}"
    if c.max_examples is not None and (not _is_int(c.max_examples) or c.max_examples < 1):
        yield f"max_examples must be a positive integer or null, got {c.max_examples!r}"
    if not _is_int(c.max_steps) or c.max_steps == 0 or c.max_steps < -1:
        yield f"max_steps must be -1 (use num_epochs) or a positive integer, got {c.max_steps!r}"
    for name in ("num_epochs", "learning_rate"):
        if not _is_number(getattr(c, name)) or getattr(c, name) <= 0:
            yield f"{name} must be a positive number, got {getattr(c, name)!r}"
    for name in ("weight_decay", "max_grad_norm"):
        if not _is_number(getattr(c, name)) or getattr(c, name) < 0:
            yield f"{name} must be a non-negative number, got {getattr(c, name)!r}"
    if _is_int(c.batch_size) and _is_int(c.micro_batch_size) and c.micro_batch_size > 0 \
            and c.batch_size % c.micro_batch_size:
        yield (f"batch_size {c.batch_size} is not a multiple of micro_batch_size {c.micro_batch_size} "
               "(the original silently rounded the accumulation down)")
    if c.load_in_8bit and c.load_in_4bit:
        yield "load_in_8bit and load_in_4bit exclude each other"
    if c.cutoff_len == 1:
        yield "cutoff_len must leave room for a prompt and a response (>= 2)"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(name: str, value: Any) -> Any:
    """Bring a YAML or flag value to the field's type: PyYAML reads `3e-4` as a string, flags are all strings."""
    kind = _KIND[name]
    if value is None or not isinstance(value, str):
        return float(value) if kind == "float" and _is_int(value) else value
    if kind == "int":
        return None if value.lower() in ("null", "none") else _parse(value, int, name)
    if kind == "float":
        return _parse(value, float, name)
    if kind == "bool":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if name == "adapter" and value.lstrip().startswith("{"):
        return yaml.safe_load(value)  # a flow mapping on the command line: --adapter '{preset: paper-lora, r: 16}'
    return value


def _parse(value: str, kind: type, name: str) -> Any:
    try:
        return kind(value)
    except ValueError as error:
        raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from error


def unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(key, FIELDS, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"unknown key {key!r}.{hint} Accepted: {', '.join(FIELDS)}"


def load_config(path: str | Path | None = None, **overrides: Any) -> FinetuneConfig:
    """A FinetuneConfig from a YAML file (optional) with `overrides` on top.

    Raises:
        FileNotFoundError: no such YAML file.
        ValueError: unreadable YAML, unknown keys, or invalid values (all problems in one message).

    Example:
        >>> load_config("configs/demo.yaml", max_steps=2).max_steps
        2
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such config file: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML: {error}") from error
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        values.update(loaded or {})
    values.update(overrides)
    problems = [unknown_key_message(k) for k in values if k not in FIELDS]
    coerced = {}
    for key, value in values.items():
        if key in FIELDS:
            try:
                coerced[key] = _coerce(key, value)
            except ValueError as error:
                problems.append(str(error))
    if problems:
        where = f"{path}: " if path is not None else ""
        raise ValueError(f"invalid finetune config: {where}" + "; ".join(problems))
    return FinetuneConfig(**coerced)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """`--config FILE` plus one flag per field; flags not given leave the YAML value (or the default) alone."""
    parser.add_argument("--config", help="YAML file of settings (keys = the flags below, with underscores)")
    for name, f in FIELDS.items():
        flag = "--" + name.replace("_", "-")
        help = f"{f.metadata['help']} (default: {f.default})"
        if _KIND[name] == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help)
        else:
            parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, metavar=name.upper(), help=help)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The config that `--config` plus the given flags describe."""
    overrides = {name: getattr(args, name) for name in FIELDS if hasattr(args, name)}
    return load_config(getattr(args, "config", None), **overrides)
