"""Fine-tune a base model with one adapter: config -> model -> attach -> tokenise + mask -> collate -> Trainer
-> train -> save -> manifest.

    llm-adapters finetune --config configs/demo.yaml
    llm-adapters finetune --config configs/paper/llama-7b-lora.yaml --data math_10k.json --output-dir runs/lora
    llm-adapters finetune --base-model tiny-llama --adapter paper-lora --data d.json --output-dir out --max-steps 4

The transformers Trainer owns the loop, logging, checkpoints and distributed launch (`torchrun` / `accelerate
launch` work unchanged). What we add: exact label masking (train_data.py), batches without padding waste
(length grouping or packing), a loss computed only where labels exist, normalised per label token over the whole
accumulated batch, resume after a kill with the same command, and a manifest that makes the run traceable.
"""
from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainingArguments, set_seed

from llm_adapters.methods import attach, count_parameters
from llm_adapters.methods.spec import PROMPT_LEARNING
from llm_adapters.models import META_PRESETS, load_model, prepare_tokenizer
from llm_adapters.train_config import FinetuneConfig
from llm_adapters.train_data import (IGNORE, PACKING_MODEL_TYPES, PREFIX_SHARING_MODEL_TYPES, PackedCollator,
                                     PaddedCollator, SeededSampler, encode_records, read_training_records,
                                     sha256_path, split_records)
from llm_adapters.train_output import begin_run, finish_output_dir, plan_output_dir, write_loss_log, write_manifest


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


def finetune(config: FinetuneConfig) -> Path:
    """Train the adapter that `config` describes and write the run folder; rerun after a kill to resume.

    Long on purpose: like nanoGPT's train.py it reads top to bottom, one commented phase after another.

    Args:
        config: the run's settings (see FinetuneConfig; `load_config` reads them from YAML).

    Returns:
        The output folder: adapter_config.json + adapter_model.safetensors, the tokenizer, manifest.json,
        loss_log.jsonl, loss_curve.png.

    Raises:
        FileExistsError: output_dir holds a finished run or foreign files (pass overwrite to replace them).
        ValueError: bad data (named by file, record, field), a resumed run whose settings differ (named by key),
            or a setting this machine or architecture cannot do (bf16/fp16/8-bit without CUDA, packing).

    Example:
        >>> out = finetune(load_config("configs/demo.yaml"))
    """
    started = time.time()
    out = Path(config.output_dir)
    data_sha256 = sha256_path(config.data) if Path(config.data).exists() else None
    records = read_training_records(config.data)  # validates every record before anything is written
    plan = plan_output_dir(out, config, data_sha256)  # refuses a finished, foreign or differing run folder
    _check_machine(config)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % (config.micro_batch_size * world_size):
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size x devices "
                         f"({config.micro_batch_size} x {world_size})")
    accumulation = config.batch_size // (config.micro_batch_size * world_size)

    # Model and adapter.
    model, tokenizer = _load_base(config)
    spec = config.spec
    model.config.use_cache = False  # no KV cache in training; a cache would also hide packed sequences
    if config.batching == "packed" and model.config.model_type not in PACKING_MODEL_TYPES:
        raise ValueError(f"batching packed needs an architecture whose attention honours restarting position_ids "
                         f"({', '.join(PACKING_MODEL_TYPES)}), not {model.config.model_type}; use batching length")
    set_seed(config.seed)  # the adapter's initial weights
    peft_model = attach(model, spec)
    for parameter in peft_model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()  # fp32 adapter weights under a bf16/fp16 base (AMP's rule)
    parameters = count_parameters(peft_model)
    targets = sorted(getattr(peft_model.peft_config["default"], "target_modules", None) or [])
    _say(f"adapter {spec.method} on {', '.join(targets) or 'the input sequence'}: {parameters['trainable']:,} "
         f"trainable of {parameters['total']:,} parameters ({parameters['percent']:.3f} %)")

    # Data: split, tokenise, mask.
    train_records, val_records = split_records(records, config.val_set_size, config.seed, config.max_examples)
    encode = dict(template=config.template, cutoff_len=config.cutoff_len, train_on_inputs=config.train_on_inputs)
    train_set, train_stats = encode_records(train_records, tokenizer, **encode)
    val_set, val_stats = encode_records(val_records, tokenizer, **encode)
    if not train_set:
        raise ValueError(f"{config.data}: no training example keeps a response token within cutoff_len "
                         f"{config.cutoff_len} ({train_stats.dropped_response_cut} dropped); raise cutoff_len")
    tokens_per_step = train_stats.tokens / len(train_set) * config.batch_size
    _say(f"data: {train_stats.examples} training examples ({train_stats.truncated} truncated at "
         f"{config.cutoff_len} tokens, kept without EOS; {train_stats.dropped_response_cut} dropped: response cut "
         f"off entirely), {len(val_set)} validation; loss on "
         f"{'prompt + response' if config.train_on_inputs else 'response'} tokens")
    _say(f"batch {config.batch_size} = micro-batch {config.micro_batch_size} x {accumulation} accumulation x "
         f"{world_size} device(s), ~{tokens_per_step:.0f} tokens per step; batching: {config.batching}")

    # Collate and train.
    trainer = make_trainer(config, peft_model, tokenizer, train_set, val_set, out / "checkpoints", accumulation)
    _say(f"logits only at label positions: {'yes' if trainer.sparse_logits else 'no (prompt learning)'}; "
         f"shared prompt prefix run once per micro-batch: {'yes' if trainer.share_prefix else 'no'}")
    begin_run(out, plan, config, data_sha256)  # everything checked: only now is output_dir written to
    checkpoint = plan.checkpoint
    if plan.action == "replace":
        _say(f"--overwrite: replaced the previous content of {out}")
    if checkpoint is not None:
        _say(f"resuming from {checkpoint}" + "".join(f"; {change} (the new value wins)" for change in plan.changed))
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)

    # Save: adapter + tokenizer, loss log and curve, then the manifest (its presence marks the run finished).
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write_loss_log(out, trainer.state.log_history)
    write_manifest(out, {
        "config": config.to_dict(),
        "spec": spec.to_dict(),
        "target_modules": targets,
        "parameters": parameters,
        "data": {"path": str(config.data), "sha256": data_sha256, "records": len(records),
                 "train": train_stats.to_dict(), "validation": val_stats.to_dict()},
        "training": {"steps": trainer.state.global_step, "epochs": trainer.state.epoch,
                     "accumulation": accumulation, "devices": world_size, "tokens_per_step": round(tokens_per_step),
                     "sparse_logits": trainer.sparse_logits, "share_prefix": trainer.share_prefix,
                     "train_loss": result.training_loss,
                     "resumed_from": str(checkpoint) if checkpoint else None,
                     "train_runtime_s": result.metrics.get("train_runtime"),
                     "wall_time_s": round(time.time() - started, 1)},
        "seed": config.seed,
    })
    finish_output_dir(out, keep_checkpoints=config.keep_checkpoints)
    _say(f"done: {out} (final training loss {result.training_loss:.4f})")
    return out


def make_trainer(config: FinetuneConfig, peft_model: torch.nn.Module, tokenizer: Any, train_set: list[dict],
                 val_set: list[dict], checkpoints: Path, accumulation: int) -> AdapterTrainer:
    """The Trainer for encoded examples: our sampler and collator for `config.batching`, logits only where labels
    are (all methods but prompt learning, whose virtual tokens shift the positions), checkpoints in `checkpoints`."""
    sparse_logits = config.spec.method not in PROMPT_LEARNING and _accepts_logits_to_keep(peft_model)
    share_prefix = (config.share_prefix and sparse_logits and config.batching != "packed"
                    and not config.gradient_checkpointing  # checkpointing turns the KV cache off
                    and peft_model.get_base_model().config.model_type in PREFIX_SHARING_MODEL_TYPES)
    collator = (PackedCollator() if config.batching == "packed"
                else PaddedCollator(tokenizer.pad_token_id, share_prefix=share_prefix))
    sampler = SeededSampler([len(e["input_ids"]) for e in train_set], config.micro_batch_size, config.seed,
                            group_by_length=config.batching == "length")
    return AdapterTrainer(
        model=peft_model, args=_training_arguments(config, checkpoints, accumulation, bool(val_set)),
        train_dataset=train_set, eval_dataset=val_set or None, data_collator=collator,
        sampler=sampler, sparse_logits=sparse_logits, share_prefix=share_prefix,
    )


def _load_base(config: FinetuneConfig) -> tuple[torch.nn.Module, Any]:
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[config.precision]
    if config.base_model in META_PRESETS:
        raise ValueError(f"{config.base_model!r} is a weightless preset for counting parameters; give a folder or "
                         "hub id with weights (e.g. yahma/llama-7b-hf)")
    if not (config.load_in_8bit or config.load_in_4bit):
        return load_model(config.base_model, dtype=dtype, trust_remote_code=config.trust_remote_code)
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_8bit=config.load_in_8bit, load_in_4bit=config.load_in_4bit,
                                      bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=config.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        config.base_model, dtype=dtype, quantization_config=quantization, trust_remote_code=config.trust_remote_code,
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    prepare_tokenizer(tokenizer, model)
    return model, tokenizer


def _check_machine(config: FinetuneConfig) -> None:
    """Settings this machine cannot run fail before the model loads, with what to use instead."""
    cuda = torch.cuda.is_available()
    if config.precision == "bf16" and not (cuda and torch.cuda.is_bf16_supported()):
        raise ValueError("precision bf16 needs a CUDA GPU with bf16 support, and this machine has none; "
                         "use precision fp32 (or fp16 on an older GPU)")
    if config.precision == "fp16" and not cuda:
        raise ValueError("precision fp16 needs a CUDA GPU, and this machine has none; use precision fp32")
    if config.load_in_8bit or config.load_in_4bit:
        flag = "load_in_8bit" if config.load_in_8bit else "load_in_4bit"
        if not cuda:
            raise ValueError(f"{flag} needs a CUDA GPU (bitsandbytes), and this machine has none; "
                             "train the base in fp32 instead")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise ValueError(f"{flag} needs the bitsandbytes package: pip install bitsandbytes") from error
    if config.batching == "packed":
        if config.spec.method in PROMPT_LEARNING:
            raise ValueError(f"batching packed cannot be used with {config.spec.method}: PEFT's prompt learning "
                             "ignores position_ids, so packed examples would see each other; use batching length")


def _accepts_logits_to_keep(peft_model: torch.nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(peft_model.get_base_model().forward).parameters


def _training_arguments(config: FinetuneConfig, checkpoints: Path, accumulation: int, has_eval: bool
                        ) -> TrainingArguments:
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
        bf16=config.precision == "bf16",
        fp16=config.precision == "fp16",
        activation_checkpointing=config.gradient_checkpointing,  # transformers 5's name for it
        activation_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=config.eval_steps if has_eval else None,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        prediction_loss_only=True,
        remove_unused_columns=False,  # our examples carry exactly what the collator needs
        label_names=["labels"],
        report_to="none",
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )


def _say(message: str) -> None:
    print(f"[finetune] {message}", flush=True)
