"""Fine-tune a base model with one adapter, in three named phases (a torchtune recipe's shape):

    setup  check everything (data, run folder, machine), load the base, attach the adapter, tokenise and mask,
           build the Trainer; only then write `run.json` into the run folder
    train  the Trainer's loop, resumed from the last complete checkpoint after a kill
    save   adapter + tokenizer, loss log and curve, then `manifest.json` (written last: it marks the run finished)

    llm-adapters finetune --config configs/demo.yaml
    llm-adapters finetune --config configs/paper/llama-7b-lora.yaml --data math_10k.json --output-dir runs/lora
    llm-adapters finetune --base-model tiny-llama --adapter paper-lora --data d.json --output-dir out --max-steps 4

What we add to the Trainer: exact label masking (batches.py), batches without padding waste (length grouping or
packing), a loss computed only where labels exist, normalised per label token over the whole accumulated batch
(trainer.py), resume after a kill with the same command and a run identity by content (rundir.py), and a
manifest that makes the run traceable.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import set_seed

from llm_adapters import dist, rundir
from llm_adapters.data.io import read_records
from llm_adapters.errors import UserError
from llm_adapters.files import sha256_path, write_json_atomic, write_jsonl_atomic
from llm_adapters.methods import attach, count_parameters, save_adapter
from llm_adapters.models import DTYPES, META_PRESETS, base_identity, load_model
from llm_adapters.plots import loss_curve
from llm_adapters.provenance import provenance
from llm_adapters.train.batches import PACKING_MODEL_TYPES, EncodeStats, encode_records, split_records
from llm_adapters.train.config import FinetuneConfig
from llm_adapters.train.trainer import AdapterTrainer, latest_checkpoint, loss_summary, make_trainer

# (PEFT names the initial adapter after its folder when it converts: no dot in the name.)
MANIFEST, CHECKPOINTS, INITIAL_ADAPTER = "manifest.json", "checkpoints", "initial-adapter"
# What a run writes in its folder (rundir: --overwrite removes these and nothing else). PEFT's save writes the
# adapter and a model card (README.md); the tokenizer's files are recorded by name when they are saved.
OUTPUTS = ("adapter_config.json", "adapter_model.safetensors", "README.md", MANIFEST, "loss_log.jsonl",
           "loss_curve.png", CHECKPOINTS, INITIAL_ADAPTER, ".tokenizer-*",
           # the Trainer's own save (sharded runs): its arguments and the tokenizer's usual files
           "training_args.bin", "tokenizer*", "special_tokens_map.json", "chat_template.jinja", "vocab.json",
           "merges.txt", "added_tokens.json")


def finetune(config: FinetuneConfig) -> Path:
    """Train the adapter that `config` describes and write the run folder; rerun after a kill to resume.

    A folder that already holds this run, finished (same settings, same data and base model by content), is
    left as it is.

    Args:
        config: the run's settings (see FinetuneConfig; `load_config` reads them from YAML).

    Returns:
        The output folder: adapter_config.json + adapter_model.safetensors, the tokenizer, manifest.json,
        loss_log.jsonl, loss_curve.png, run.json.

    Raises:
        OutputExistsError: output_dir holds foreign files (pass overwrite to replace them).
        UserError: bad data (named by file, record, field), a folder holding a run with other settings or inputs
            (named by key), or a setting this machine or architecture cannot do (bf16/fp16/8-bit without CUDA).

    Example:
        >>> out = finetune(load_config("configs/demo.yaml"))
    """
    run = FinetuneRun.setup(config)
    if run.plan.action != "done":
        run.train()
        run.save()
    return run.out


@dataclass
class FinetuneRun:
    """The state the three phases share."""

    config: FinetuneConfig
    out: Path
    plan: rundir.Plan
    identity: dict[str, Any]
    data: dict[str, Any]
    precision: str
    started: float
    peft_model: Any = None
    tokenizer: Any = None
    trainer: AdapterTrainer | None = None
    parameters: dict[str, float] | None = None
    stats: tuple[EncodeStats, EncodeStats] | None = None
    accumulation: int = 1
    world_size: int = 1
    result: Any = None
    checkpoint: Path | None = None

    # ------------------------------------------------------------------------------------------------- setup

    @classmethod
    def setup(cls, config: FinetuneConfig) -> FinetuneRun:
        started, out = time.time(), Path(config.output_dir)
        records = read_records(config.data, ("instruction", "output"))  # every record checked before any write
        data = {"path": str(config.data), "sha256": sha256_path(config.data), "records": len(records)}
        precision = config.machine_precision()  # auto resolved; what this machine cannot do fails here
        identity = {**config.identity(), **config.planned_machine(), "data_sha256": data["sha256"],
                    "base_model": base_identity(config.base_model)}
        rundir.check_apart(out, {"base model": config.base_model}, flag="output_dir")
        dist.set_timeout(config.dist_timeout)
        plan = rundir.plan(out, identity, kind="finetune", outputs=OUTPUTS, finished=MANIFEST,
                           overwrite=config.overwrite, may_change=config.may_change())
        dist.barrier()  # every process has read the folder before the main one changes it
        run = cls(config, out, plan, identity, data, precision, started)
        if plan.action == "done":
            _say(f"{out} already holds this run, finished (same settings, data and base model): nothing to do; "
                 "pass --overwrite to train it again")
            return run
        _check_sharding(config)
        run.world_size = dist.world_size()
        if config.batch_size % (config.micro_batch_size * run.world_size):
            raise UserError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size x devices "
                            f"({config.micro_batch_size} x {run.world_size})")
        run.accumulation = config.batch_size // (config.micro_batch_size * run.world_size)
        run._attach(records)
        run.checkpoint = latest_checkpoint(out / CHECKPOINTS) if plan.action == "resume" else None
        if dist.is_main():  # only the main process writes; the others wait below
            rundir.begin(out, plan, identity, config.may_change(), record={"data": config.data,
                                                                           "base_model": config.base_model},
                         kind="finetune", outputs=OUTPUTS)
            if plan.action == "replace":
                _say(f"--overwrite: replaced the previous content of {out}")
            if config.spec.method_record.rewrites_base and not (out / INITIAL_ADAPTER).exists():
                # PiSSA/OLoRA: the saved adapter will be the difference to this initial state (save_adapter).
                save_adapter(run.peft_model, out / INITIAL_ADAPTER)
            if plan.action == "resume" and run.checkpoint is None:
                shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # killed before its first complete checkpoint
        dist.barrier()
        return run

    def _attach(self, records: list[dict[str, Any]]) -> None:
        """Model, adapter, examples and Trainer (setup's heavy part; nothing is written)."""
        config, spec = self.config, self.config.spec
        if config.base_model in META_PRESETS:
            raise UserError(f"{config.base_model!r} is a weightless preset for counting parameters; give a folder "
                            "or hub id with weights (e.g. yahma/llama-7b-hf)")
        # On the CPU (the Trainer moves it to its device), or quantised straight onto this process's GPU.
        quantization = "8bit" if config.load_in_8bit else "4bit" if config.load_in_4bit else None
        model, tokenizer = load_model(config.base_model, device=None, dtype=DTYPES[self.precision],
                                      trust_remote_code=config.trust_remote_code, quantization=quantization)
        if quantization:
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
        model.config.use_cache = False  # no KV cache in training; a cache would also hide packed sequences
        if config.batching == "packed" and model.config.model_type not in PACKING_MODEL_TYPES:
            raise UserError(f"batching packed needs an architecture whose attention honours restarting position_ids"
                            f" ({', '.join(PACKING_MODEL_TYPES)}), not {model.config.model_type}; use batching "
                            "length")
        set_seed(config.seed)  # the adapter's initial weights
        peft_model = attach(model, spec)
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()  # fp32 adapter weights under a bf16/fp16 base (AMP's rule)
        self.parameters = count_parameters(peft_model)
        targets = sorted(getattr(peft_model.peft_config["default"], "target_modules", None) or [])
        _say(f"adapter {spec.method} on {', '.join(targets) or 'the input sequence'}: "
             f"{self.parameters['trainable']:,} trainable of {self.parameters['total']:,} parameters "
             f"({self.parameters['percent']:.3f} %); precision {self.precision}")

        train_records, val_records = split_records(records, config.val_set_size, config.seed, config.max_examples)
        encode = dict(template=config.template, cutoff_len=config.cutoff_len, train_on_inputs=config.train_on_inputs)
        (train_set, train_stats), (val_set, val_stats) = (encode_records(part, tokenizer, **encode)
                                                          for part in (train_records, val_records))
        if not train_set:
            raise UserError(f"{config.data}: no training example keeps a response token within cutoff_len "
                            f"{config.cutoff_len} ({train_stats.dropped_response_cut} dropped); raise cutoff_len")
        self.stats = train_stats, val_stats
        tokens_per_step = train_stats.tokens / len(train_set) * config.batch_size
        _say(f"data: {train_stats.examples} training examples ({train_stats.truncated} truncated at "
             f"{config.cutoff_len} tokens, kept without EOS; {train_stats.dropped_response_cut} dropped: response "
             f"cut off entirely), {len(val_set)} validation; loss on "
             f"{'prompt + response' if config.train_on_inputs else 'response'} tokens")
        _say(f"batch {config.batch_size} = micro-batch {config.micro_batch_size} x {self.accumulation} accumulation "
             f"x {self.world_size} device(s), ~{tokens_per_step:.0f} tokens per step; batching: {config.batching}")

        self.trainer = make_trainer(config, peft_model, tokenizer, train_set, val_set, self.out / CHECKPOINTS,
                                    self.accumulation, self.precision, spec.method_record.after_optimizer_step)
        _say(f"logits only at label positions: {'yes' if self.trainer.sparse_logits else 'no (prompt learning)'}; "
             f"shared prompt prefix run once per micro-batch: {'yes' if self.trainer.share_prefix else 'no'}")
        self.peft_model, self.tokenizer = peft_model, tokenizer

    # ------------------------------------------------------------------------------------------------- train

    def train(self) -> None:
        if self.checkpoint is not None:
            _say(f"resuming from {self.checkpoint}" + "".join(f"; {change} (the new value wins)"
                                                              for change in self.plan.changed))
        self.result = self.trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)

    # ------------------------------------------------------------------------------------------------- save

    def save(self) -> None:
        trainer = self.trainer
        sharded = trainer.is_fsdp_enabled or (trainer.is_deepspeed_enabled and _zero3(self.config))
        if sharded:  # every process holds a shard: they gather the adapter together, the main one writes it
            if trainer.is_fsdp_enabled:
                trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
            trainer.save_model(str(self.out))
        if dist.is_main():
            self._write(adapter_saved=sharded)
        dist.barrier()  # the run folder is complete when any process returns

    def _write(self, adapter_saved: bool) -> None:
        out, config, state = self.out, self.config, self.trainer.state
        initial = out / INITIAL_ADAPTER if config.spec.method_record.rewrites_base else None
        if not adapter_saved:
            save_adapter(self.peft_model, out, initial=initial)
        with tempfile.TemporaryDirectory(dir=out, prefix=".tokenizer-") as staging:  # its names, then its files
            names = [Path(f).name for f in self.tokenizer.save_pretrained(staging)]
            rundir.add_outputs(out, names)
            for name in names:
                os.replace(Path(staging) / name, out / name)
        write_jsonl_atomic(out / "loss_log.jsonl", state.log_history)
        loss_curve(state.log_history, out / "loss_curve.png")
        loss = loss_summary(state.log_history)
        train_stats, val_stats = self.stats
        device = str(next(self.peft_model.parameters()).device)
        write_json_atomic(out / MANIFEST, {
            "config": config.to_dict(),
            "spec": config.spec.to_dict(),
            "target_modules": sorted(getattr(self.peft_model.peft_config["default"], "target_modules", None) or []),
            "parameters": self.parameters,
            "base_model": self.identity["base_model"],
            "data": {**self.data, "train": train_stats.to_dict(), "validation": val_stats.to_dict()},
            "training": {"steps": state.global_step, "epochs": state.epoch, "precision": self.precision,
                         "accumulation": self.accumulation, "devices": self.world_size,
                         "tokens_per_step": round(train_stats.tokens / train_stats.examples * config.batch_size),
                         "sparse_logits": self.trainer.sparse_logits, "share_prefix": self.trainer.share_prefix,
                         "last_loss": loss["last"], "mean_loss": loss["mean"],
                         "resumed_from": str(self.checkpoint) if self.checkpoint else None,
                         "train_runtime_s": self.result.metrics.get("train_runtime"),
                         "wall_time_s": round(time.time() - self.started, 1)},
            "seed": config.seed,
            "provenance": provenance(device=device, dtype=self.precision),
        })
        if initial is not None:
            shutil.rmtree(initial, ignore_errors=True)
        if not config.keep_checkpoints:
            shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
        _say(f"done: {out} (last training loss {loss['last']:.4f}, mean over the run {loss['mean']:.4f})")


def _check_sharding(config: FinetuneConfig) -> None:
    """What cannot train with sharded weights (FSDP, DeepSpeed ZeRO-3) is refused before anything loads: prompt
    learning keeps its virtual-token encoder outside the wrapped blocks, PiSSA/OLoRA decompose whole weights,
    GPT-2's Conv1D layers are not the Linear layers the adapters' sharding rules expect; FSDP on CPU processes,
    which accelerate runs as plain DDP (it ignores the FSDP settings there); and under FSDP1 with
    `use_orig_params: false`, adapter weights that would share a flat parameter with frozen ones."""
    fsdp = dist.fsdp_requested()
    if not (fsdp or _zero3(config)):
        return
    engine = "FSDP" if fsdp else "DeepSpeed ZeRO-3"
    method = config.spec.method_record
    if method.acts_on_input:
        raise UserError(f"method {method.name!r} cannot train under {engine} (its virtual-token encoder is not "
                        "sharded with the model); use DDP (torchrun) or DeepSpeed ZeRO-2")
    if method.rewrites_base:
        raise UserError(f"method {method.name!r} decomposes whole base weights at initialisation, which {engine} "
                        "holds in shards; use DDP (torchrun) or DeepSpeed ZeRO-2")
    if config.base_model in ("tiny-gpt2", "gpt2") or "gpt2" in config.base_model.lower():
        raise UserError(f"{engine} with GPT-2's Conv1D layers is not supported here; use DDP (torchrun)")
    if fsdp:
        _check_fsdp(config)


def _check_fsdp(config: FinetuneConfig) -> None:
    import torch

    if not torch.cuda.is_available():
        raise UserError("FSDP through accelerate needs CUDA GPUs: on CPU processes accelerate trains as plain DDP and "
                        "ignores the FSDP settings (accelerate 1.x); on the CPU use torchrun (DDP), which shards "
                        "nothing but trains the same adapter")
    version = os.environ.get("FSDP_VERSION", "1")
    orig_params = os.environ.get("FSDP_USE_ORIG_PARAMS", "false").lower() in ("1", "true")
    if version == "1" and not orig_params:
        mixed = _weights_beside_frozen(config)
        if mixed:
            raise UserError(f"FSDP1 with use_orig_params false puts trainable and frozen weights in one flat "
                            f"parameter, which it refuses: {config.spec.method} has {', '.join(mixed[:3])}; set "
                            "fsdp_use_orig_params: true or fsdp_version: 2 (configs/launch/accelerate-fsdp.yaml)")


def _weights_beside_frozen(config: FinetuneConfig) -> list[str]:
    """The adapter's trainable weights that PEFT's FSDP wrap policy (a unit per Linear layer that is trainable as a
    whole) does not give a unit of their own, on the base model's architecture (meta device, no weights)."""
    from llm_adapters.models import load_meta

    peft_model = attach(load_meta(config.base_model, config.trust_remote_code), config.spec)
    found = []
    for module_name, module in peft_model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not any(p.requires_grad for p in own.values()):
            continue
        alone = not list(module.children()) and getattr(getattr(module, "weight", None), "requires_grad", False)
        if not alone:
            found += [f"{module_name}.{name}".removeprefix("base_model.model.") for name, p in own.items()
                      if p.requires_grad]
    return found


def _zero3(config: FinetuneConfig) -> bool:
    """DeepSpeed ZeRO stage 3, from the config's DeepSpeed file or accelerate's environment."""
    if os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return True
    if not config.deepspeed:
        return False
    try:
        settings = json.loads(Path(config.deepspeed).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserError(f"deepspeed: cannot read {config.deepspeed} ({error})") from error
    return settings.get("zero_optimization", {}).get("stage") == 3


def _say(message: str) -> None:
    if dist.is_main():
        print(f"[finetune] {message}", flush=True)
