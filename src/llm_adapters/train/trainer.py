"""The Trainer we train with: our sampler, our loss (summed over label tokens, normalised by the accumulated
batch's count, logits only where labels are, a shared prompt prefix run once), the TrainingArguments a config
maps to, and the callbacks that report progress and run a method's per-step hook.

The transformers Trainer owns the loop, logging, checkpoints and distributed launch (`torchrun` / `accelerate
launch` work unchanged).
"""
from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from llm_adapters.train.batches import (IGNORE, PREFIX_SHARING_MODEL_TYPES, PackedCollator, PaddedCollator,
                                        SeededSampler)
from llm_adapters.train.config import FinetuneConfig


class AdapterTrainer(Trainer):
    """Trainer with our sampler and a loss summed over label tokens, divided by the accumulated batch's count.

    Loss normalisation under gradient accumulation: the Trainer counts the label tokens of all micro-batches of
    one optimiser step (over all devices) *before* the first forward, and passes the count as
    `num_items_in_batch`. Each micro-batch returns sum(token losses) / count, so the accumulated gradient is the
    gradient of the mean over every label token of the step, whatever the micro-batches' lengths (averaging
    per-micro-batch means would weight a token of a short micro-batch more). `loss_is_scaled_for_ga` tells the
    Trainer not to divide again by the accumulation steps.
    """

    loss_is_scaled_for_ga = True

    def __init__(self, *args: Any, sampler: SeededSampler, sparse_logits: bool, share_prefix: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.sampler, self.sparse_logits, self.share_prefix = sampler, sparse_logits, share_prefix
        self.model_accepts_loss_kwargs = True  # makes the Trainer count label tokens per accumulated batch

    def _get_train_sampler(self, train_dataset=None) -> SeededSampler:
        return self.sampler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        inputs.pop("labels")  # kept in the batch only so that the Trainer counts label tokens
        targets = inputs.pop("shift_labels")  # [batch, seq]: position i's target is token i+1, or -100
        prefix_len = inputs.pop("prefix_len", 0)
        count = num_items_in_batch if num_items_in_batch is not None else targets.ne(IGNORE).sum()
        loss = token_loss_sum(model, inputs, targets, self.sparse_logits, prefix_len) / count
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size  # DDP averages gradients over devices; count is the global one
        return (loss, {}) if return_outputs else loss


def token_loss_sum(model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                   sparse_logits: bool, prefix_len: int = 0) -> torch.Tensor:
    """Sum of the cross-entropy over every target that is not -100.

    With `sparse_logits`, logits are computed only at positions where some row has a target (`logits_to_keep`):
    on instruction data with the loss on responses only, that skips the LM head and its [tokens x vocabulary]
    logits, softmax and gradient for every prompt token. With `prefix_len`, the rows' shared first tokens run once
    (`_shared_prefix_loss_sum`).
    """
    if prefix_len:
        return _shared_prefix_loss_sum(model, inputs, targets, prefix_len)
    if not sparse_logits:
        # Prompt and P-tuning prepend virtual tokens: their logits come first, the sequence's are the last ones.
        return _cross_entropy_sum(model(**inputs).logits[:, -targets.shape[1]:], targets)
    keep, targets = _kept_positions(targets)
    return _cross_entropy_sum(model(**inputs, logits_to_keep=keep).logits, targets)


def _shared_prefix_loss_sum(model: torch.nn.Module, inputs: dict[str, torch.Tensor], targets: torch.Tensor,
                            prefix_len: int) -> torch.Tensor:
    """token_loss_sum where all rows start with the same `prefix_len` tokens: the prefix runs once, as a batch
    of one, and its keys/values are repeated for every row (the repeat's backward sums the rows' gradients, so
    loss and gradients equal the plain batch's). On LLM-Adapters data the template header is ~24 of ~97 tokens:
    a quarter of each row's compute after the first."""
    input_ids, rows, length = inputs["input_ids"], *inputs["input_ids"].shape
    head_keep, head_targets = _kept_positions(targets[:, :prefix_len])
    head = model(input_ids=input_ids[:1, :prefix_len], use_cache=True, logits_to_keep=head_keep)
    cache = head.cache
    cache.batch_repeat_interleave(rows)  # [1, heads, prefix, dim] -> [rows, heads, prefix, dim] per layer
    tail_keep, tail_targets = _kept_positions(targets[:, prefix_len:])
    positions = torch.arange(prefix_len, length, device=input_ids.device).expand(rows, -1)
    tail = model(input_ids=input_ids[:, prefix_len:], attention_mask=inputs["attention_mask"], cache=cache,
                 use_cache=True, position_ids=positions, logits_to_keep=tail_keep)
    return (_cross_entropy_sum(head.logits.expand(rows, -1, -1), head_targets)
            + _cross_entropy_sum(tail.logits, tail_targets))


def _kept_positions(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits_to_keep, their targets): the positions where some row has a target, as indices. (An int n, the
    last n positions, would slice without a copy, but the slice of a [rows > 1, seq, hidden] tensor is not
    contiguous, and the LM head then runs as a slower batched matmul: the gathered copy is faster.)"""
    positions = targets.ne(IGNORE).any(dim=0).nonzero().squeeze(1)  # [kept]
    return positions, targets[:, positions]


def _cross_entropy_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="sum")


def make_trainer(config: FinetuneConfig, peft_model: torch.nn.Module, tokenizer: Any, train_set: list[dict],
                 val_set: list[dict], checkpoints: Path, accumulation: int, precision: str = "fp32",
                 after_optimizer_step: Callable[[Any, int], None] | None = None) -> AdapterTrainer:
    """The Trainer for encoded examples: our sampler and collator for `config.batching`, logits only where labels
    are (all methods but prompt learning, whose virtual tokens shift the positions), checkpoints in `checkpoints`,
    progress reported every `config.logging_steps` (the log itself keeps every step)."""
    sparse_logits = not config.spec.method_record.acts_on_input and _accepts_logits_to_keep(peft_model)
    base_config = peft_model.get_base_model().config
    share_prefix = (config.share_prefix and sparse_logits and config.batching != "packed"
                    and not config.gradient_checkpointing  # checkpointing turns the KV cache off
                    and base_config.model_type in PREFIX_SHARING_MODEL_TYPES)
    flash = str(getattr(base_config, "_attn_implementation", "")).startswith("flash")
    collator = (PackedCollator(flash_attention=flash) if config.batching == "packed"
                else PaddedCollator(tokenizer.pad_token_id, share_prefix=share_prefix))
    sampler = SeededSampler([len(e["input_ids"]) for e in train_set], config.batch_size, config.seed,
                            group_by_length=config.batching == "length")
    trainer = AdapterTrainer(
        model=peft_model, args=training_arguments(config, checkpoints, accumulation, bool(val_set), precision),
        train_dataset=train_set, eval_dataset=val_set or None, data_collator=collator,
        sampler=sampler, sparse_logits=sparse_logits, share_prefix=share_prefix,
    )
    if getattr(trainer.accelerator.state, "fsdp_plugin", None) is not None:
        from peft.utils.other import fsdp_auto_wrap_policy

        # PEFT's rule (its FSDP guide): frozen and trainable weights in separate FSDP units.
        trainer.accelerator.state.fsdp_plugin.auto_wrap_policy = fsdp_auto_wrap_policy(trainer.model)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LossReport(config.logging_steps, config.progress))
    if after_optimizer_step is not None:
        trainer.add_callback(AfterOptimizerStep(peft_model, after_optimizer_step))
    return trainer


def _accepts_logits_to_keep(peft_model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(peft_model.get_base_model().forward).parameters


def training_arguments(config: FinetuneConfig, checkpoints: Path, accumulation: int, has_eval: bool,
                       precision: str) -> TrainingArguments:
    """The Trainer's settings for `config`. Every step is logged (loss_log.jsonl, the curve and the manifest's
    whole-run mean need them, and a resumed run then logs exactly what an uninterrupted one does);
    `config.logging_steps` sets how often LossReport prints."""
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.micro_batch_size,
        per_device_eval_batch_size=config.micro_batch_size,
        gradient_accumulation_steps=accumulation,
        num_train_epochs=config.num_epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        seed=config.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=1,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        prediction_loss_only=True,
        remove_unused_columns=False,  # our examples carry exactly what the collator needs
        label_names=["labels"],
        report_to=config.report_to,
        deepspeed=config.deepspeed,
        ddp_find_unused_parameters=False,
        ddp_timeout=config.dist_timeout,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        use_cpu=not torch.cuda.is_available(),  # on the CPU, torchrun's processes then train as one (gloo DDP)
        disable_tqdm=True,  # LossReport draws the bar
    )


class LossReport(TrainerCallback):
    """A progress bar with rate and ETA (or, without it, plain lines for logs), and the loss every `every` steps."""

    def __init__(self, every: int, progress: bool):
        self.every, self.progress, self.bar = every, progress, None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.progress and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune", unit="step",
                            dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = state.global_step
        if "loss" in logs and self.bar is not None:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")
        line = None
        if "loss" in logs and (step % self.every == 0 or step == state.max_steps):
            line = f"step {step}/{state.max_steps}: loss {logs['loss']:.4f}, lr {logs.get('learning_rate', 0):.2e}"
        elif "eval_loss" in logs:
            line = f"step {step}/{state.max_steps}: validation loss {logs['eval_loss']:.4f}"
        if line:
            (self.bar.write if self.bar is not None else print)(f"[finetune] {line}")

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class AfterOptimizerStep(TrainerCallback):
    """Runs a method's hook after each optimiser step, gradients still present (AdaLoRA's rank budget)."""

    def __init__(self, model: Any, hook: Callable[[Any, int], None]):
        self.model, self.hook = model, hook

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.hook(self.model, state.global_step)


def loss_summary(log_history: list[dict[str, Any]]) -> dict[str, float | None]:
    """The last step's training loss and the mean over every step of the run (a resumed run's log holds the
    steps before the kill too, so both equal an uninterrupted run's)."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    return {"last": losses[-1] if losses else None,
            "mean": math.fsum(losses) / len(losses) if losses else None, "steps_logged": len(losses)}


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint: the Trainer writes trainer_state.json last, so a checkpoint cut
    short by a kill lacks it (or holds it truncated) and is skipped."""
    if not folder.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return path
        except (OSError, ValueError):
            continue
    return None
