"""`FinetuneConfig`: every setting of `llm-adapters finetune`, validated, from YAML and/or `--key value` flags.

A YAML file supplies the values, flags override them; every field is both a YAML key and a flag
(`cutoff_len` / `--cutoff-len`), through `llm_adapters.config`. Every problem of a config is reported in one error.
Checks that depend on the machine (CUDA for bf16, fp16 and 8/4-bit, the architecture for packing) happen when
training starts, so a 7B preset validates on a laptop.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_adapters import config as configs
from llm_adapters.data.templates import TEMPLATES
from llm_adapters.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# `precision: auto` on a CPU with bf16 units (README "Precision" says why, docs/benchmarks.md measures it).
CPU_AUTO_BF16 = False
SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup")
BATCHING = ("length", "packed", "padded")
REPORT_TO = ("none", "tensorboard", "wandb")
# Settings that may change between a killed run and its resumption (the new value wins): they change how the run
# is watched or how much memory a step takes, not what it computes (micro_batch_size: the sampler forms global
# batches of batch_size whatever the micro-batches, so a run killed for memory resumes with a smaller one; in fp32
# only, `planned_machine` keeps it in a 16-bit run's identity). Every other setting is part of the run's identity
# (rundir.py).
RESUME_MAY_CHANGE = ("overwrite", "logging_steps", "save_steps", "save_total_limit", "keep_checkpoints", "progress",
                     "report_to", "deepspeed", "micro_batch_size", "dist_timeout")
# Inputs named by path in the config but identified by content: data by its sha256, the base model by
# models.base_identity; output_dir is where the run lives, not what it is.
IDENTIFIED_BY_CONTENT = ("data", "base_model", "output_dir")


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. Defaults follow the paper's LoRA run (original-system.md A.4/B.6), except
    `train_on_inputs` (the original's default was True) and the precision (auto: bf16 on a GPU that has it, fp32
    on the CPU; the original used fp16 AMP)."""

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
    precision: str = field(default="auto", metadata={
        "help": "auto (bf16 on a GPU that has it, else fp32, also on a CPU with bf16 units), fp32; bf16 (base "
                "weights in bf16, adapter fp32, autocast) needs a GPU or a CPU with bf16 units; fp16 needs a GPU"})
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
    logging_steps: int = field(default=10, metadata={
        "help": "print the training loss every N optimiser steps (loss_log.jsonl holds every step)"})
    eval_steps: int = field(default=80, metadata={"help": "validation loss every N steps (with val_set_size > 0)"})
    save_steps: int = field(default=80, metadata={"help": "checkpoint every N steps (resume point after a kill)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept while training"})
    keep_checkpoints: bool = field(default=False, metadata={"help": "keep checkpoints/ after the run finishes"})
    dist_timeout: int = field(default=4 * 3600, metadata={
        "help": "seconds a process waits for the others at a collective under several processes before it fails "
                "(torch's default is 10-30 minutes)"})
    deepspeed: str | None = field(default=None, metadata={
        "help": "a DeepSpeed config (JSON, e.g. configs/launch/deepspeed-zero2.json) for the Trainer; launch with "
                "torchrun or deepspeed"})
    progress: bool = field(default=True, metadata={"help": "a progress bar with rate and ETA (--no-progress: plain "
                                                           "loss lines, for logs)"})
    report_to: str = field(default="none", metadata={"help": f"also log to: {', '.join(REPORT_TO)} (the Trainer's "
                                                             "integrations; the package must be installed)"})

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise UserError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def spec(self):
        """The resolved AdapterSpec."""
        from llm_adapters.methods import resolve_spec

        return resolve_spec(self.adapter)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the run's result (rundir.py): all but the may-change ones and the inputs
        identified by content; the adapter as its resolved spec (a preset name and its fields are the same run)."""
        values = {k: v for k, v in self.to_dict().items() if k not in RESUME_MAY_CHANGE + IDENTIFIED_BY_CONTENT}
        values["adapter"] = self.spec.to_dict()
        return values

    def may_change(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in RESUME_MAY_CHANGE}

    def planned_machine(self) -> dict[str, Any]:
        """{"device": cuda / cpu, "precision": what `machine_precision` resolves to here} without raising (a
        precision this machine cannot run stays as written): part of a run's identity, so that a run started on
        a CPU is not resumed on a GPU, nor a study's runs trained on both merged as one. In bf16 or fp16 also the
        micro-batch size and the process count: 16-bit sums of other micro-batches round differently (a
        tiny-llama LoRA ends 1e-2 apart between micro-batch 4 and 2 in bf16, 1.6e-6 in fp32), so only an fp32
        run may resume with another micro-batch size (RESUME_MAY_CHANGE)."""
        import torch

        from llm_adapters import dist

        try:
            precision = self.machine_precision()
        except UserError:
            precision = self.precision
        machine: dict[str, Any] = {"device": "cuda" if torch.cuda.is_available() else "cpu", "precision": precision}
        if precision != "fp32":
            machine.update(micro_batch_size=self.micro_batch_size, processes=dist.world_size())
        return machine

    def machine_precision(self) -> str:
        """The precision on this machine (`auto`: bf16 on a CUDA GPU that has it, else fp32; an older GPU trains
        in fp32 too, fp16 needs care), after checking the settings this machine cannot run (before any model
        loads), with what to use instead.

        Raises:
            UserError: bf16/fp16/8-bit/4-bit without a GPU or bitsandbytes, packing with prompt learning.
        """
        import torch

        from llm_adapters.models import cpu_has_native_bf16

        cuda = torch.cuda.is_available()
        bf16 = torch.cuda.is_bf16_supported() if cuda else cpu_has_native_bf16()
        precision = self.precision
        if precision == "auto":
            precision = "bf16" if bf16 and (cuda or CPU_AUTO_BF16) else "fp32"
        if precision == "bf16" and not bf16:
            raise UserError("precision bf16 needs a CUDA GPU with bf16 support or a CPU with bf16 units (AVX512-BF16, "
                            "AMX or Arm BF16), and this machine has neither; use precision auto or fp32 (or fp16 on "
                            "an older GPU)")
        if precision == "fp16" and not cuda:
            raise UserError("precision fp16 needs a CUDA GPU, and this machine has none; use precision auto or fp32")
        if self.load_in_8bit or self.load_in_4bit:
            flag = "load_in_8bit" if self.load_in_8bit else "load_in_4bit"
            if not cuda:
                raise UserError(f"{flag} needs a CUDA GPU (bitsandbytes), and this machine has none; "
                                "train the base in fp32 instead")
            try:
                import bitsandbytes  # noqa: F401
            except ImportError as error:
                raise UserError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes") from error
            if self.spec.method_record.rewrites_base:
                raise UserError(f"method {self.spec.method!r} rewrites the base weights, which {flag} stores "
                                "quantised; use lora, dora or rslora (QLoRA) on a quantised base")
        if self.batching == "packed" and self.spec.method_record.acts_on_input:
            raise UserError(f"batching packed cannot be used with {self.spec.method}: PEFT's prompt learning "
                            "ignores position_ids, so packed examples would see each other; use batching length")
        return precision


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(FinetuneConfig)}


def _problems(c: FinetuneConfig):
    for name in ("data", "output_dir", "base_model"):
        if not isinstance(getattr(c, name), str) or not getattr(c, name):
            yield f"{name} is required"
    try:
        c.spec
    except (ValueError, TypeError) as error:
        yield f"adapter: {error}"
    for name, choices in (("template", TEMPLATES), ("lr_scheduler", SCHEDULES), ("precision", PRECISIONS),
                          ("batching", BATCHING), ("report_to", REPORT_TO)):
        if getattr(c, name) not in choices:
            yield f"{name} {getattr(c, name)!r} is not one of {', '.join(choices)}"
    for name in ("cutoff_len", "batch_size", "micro_batch_size", "logging_steps", "eval_steps", "save_steps",
                 "dist_timeout",
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


def load_config(path: str | Path | None = None, **overrides: Any) -> FinetuneConfig:
    """A FinetuneConfig from a YAML file (optional) with `overrides` on top.

    Raises:
        MissingInputError: no such YAML file.
        UserError: unreadable YAML, unknown keys, or invalid values (all problems in one message).

    Example:
        >>> load_config("configs/demo.yaml", max_steps=2).max_steps
        2
    """
    return configs.load(FinetuneConfig, path, label="finetune config", **overrides)
