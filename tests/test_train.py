"""Fine-tuning on tiny models: label masking, EOS, batching equivalence, loss normalisation, output folder, resume."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_adapters.cli import make_parser
from llm_adapters.data.templates import build_training_text
from llm_adapters.methods import attach
from llm_adapters.methods import METHODS
from llm_adapters.models import TINY_MODELS, base_identity, byte_tokenizer, load_model
from llm_adapters.train import finetune
from llm_adapters import rundir
from llm_adapters import config as configs
from llm_adapters.errors import RunMismatchError
from llm_adapters.files import sha256_file
from llm_adapters.train.config import FIELDS, FinetuneConfig, load_config
from llm_adapters.train.batches import (IGNORE, PACKING_MODEL_TYPES, PREFIX_SHARING_MODEL_TYPES, PackedCollator,
                                     PaddedCollator, SeededSampler, encode_example, encode_records,
                                     shared_prefix_length)
from llm_adapters.train.trainer import latest_checkpoint, token_loss_sum
from helpers import perturb

SRC = Path(__file__).resolve().parents[1] / "src"
RECORDS = [
    {"instruction": f"Add {a} and {b}.", "input": "", "output": f"\nA: {a} + {b} = {a + b}. The answer is {a + b}.",
     "answer": str(a + b)}
    for a, b in [(1, 2), (13, 4), (7, 25), (100, 1), (3, 3), (42, 8), (9, 90), (11, 12), (5, 60), (8, 8)]
]
ENCODE = dict(template="alpaca", cutoff_len=256, train_on_inputs=False)
# Small and fast: dropout 0 keeps runs comparable; warm-up 0 so that a few steps move the weights.
TINY_RUN = dict(base_model="tiny-llama", adapter={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
                template="alpaca", batch_size=4, micro_batch_size=2, warmup_steps=0, learning_rate=1e-2,
                max_steps=4, logging_steps=1, save_steps=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(RECORDS), encoding="utf-8")
    return path


def _run(tmp_path, data_file, name="out", **overrides) -> FinetuneConfig:
    return load_config(data=str(data_file), output_dir=str(tmp_path / name), **{**TINY_RUN, **overrides})


# --- label masking and EOS ---------------------------------------------------------------------------------------

def test_encode_example_masks_prompt_tokens_unless_train_on_inputs():
    tokenizer, record = byte_tokenizer(), RECORDS[0]
    prompt, response = build_training_text(record["instruction"], "", record["output"], template="alpaca")
    ids, labels, prompt_len, truncated = encode_example(record, tokenizer, **ENCODE)
    assert prompt_len == len(prompt.encode()) and not truncated
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tokenizer.decode(ids[prompt_len:-1]) == response
    _, all_labels, _, _ = encode_example(record, tokenizer, **{**ENCODE, "train_on_inputs": True})
    assert all_labels == ids


def test_encode_example_appends_eos_when_room_and_drops_it_when_truncated():
    tokenizer, record = byte_tokenizer(), RECORDS[0]
    ids, labels, prompt_len, truncated = encode_example(record, tokenizer, **ENCODE)
    assert ids[-1] == labels[-1] == tokenizer.eos_token_id and not truncated
    cut = len(ids) - 3
    short_ids, short_labels, _, truncated = encode_example(record, tokenizer, **{**ENCODE, "cutoff_len": cut})
    assert truncated and len(short_ids) == cut and tokenizer.eos_token_id not in short_ids
    assert short_ids == ids[:cut] and short_labels == labels[:cut]


def test_encode_example_keeps_eos_label_when_pad_is_eos():
    tokenizer = byte_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token  # as SmolLM2: pad == eos, so EOS must not be found by the pad id
    ids, labels, _, _ = encode_example(RECORDS[1], tokenizer, **ENCODE)
    assert labels[-1] == tokenizer.eos_token_id == tokenizer.pad_token_id
    batch = PaddedCollator(tokenizer.pad_token_id)([{"input_ids": ids, "labels": labels},
                                                    {"input_ids": ids[:5], "labels": labels[:5]}])
    assert batch["labels"][0, -1] == tokenizer.eos_token_id  # the real EOS keeps its label
    assert (batch["labels"][1, 5:] == IGNORE).all()  # padding gets none


def test_encode_records_drops_and_counts_examples_whose_response_is_cut_off():
    tokenizer = byte_tokenizer()
    prompt_len = encode_example(RECORDS[0], tokenizer, **ENCODE)[2]
    for train_on_inputs in (False, True):
        examples, stats = encode_records(RECORDS[:1], tokenizer, template="alpaca", cutoff_len=prompt_len,
                                         train_on_inputs=train_on_inputs)
        assert examples == [] and stats.dropped_response_cut == 1 and stats.truncated == 1
    examples, stats = encode_records(RECORDS[:1], tokenizer, template="alpaca", cutoff_len=prompt_len + 1,
                                     train_on_inputs=False)
    assert len(examples) == 1 and stats.label_tokens == 1 and stats.truncated == 1


def test_finetune_with_every_response_cut_off_raises_instead_of_nan(tmp_path, data_file):
    with pytest.raises(ValueError, match="raise cutoff_len"):
        finetune(_run(tmp_path, data_file, cutoff_len=20))


def test_finetune_bad_record_is_named_by_file_index_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    rows = [RECORDS[0], RECORDS[1], {"instruction": "no output here", "input": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl, record 2, field 'output': missing"):
        finetune(_run(tmp_path, path))
    assert not (tmp_path / "out").exists()  # nothing written before the data is valid


# --- batching: the same loss however the examples are batched --------------------------------------------------

def _examples(tokenizer, n=6):
    records = [dict(r, output=r["output"] * (1 + i % 3)) for i, r in enumerate(RECORDS[:n])]  # uneven lengths
    return encode_records(records, tokenizer, **ENCODE)[0]


def _reference_loss_sum(model, examples) -> torch.Tensor:
    """One example at a time, no padding at all."""
    return sum(token_loss_sum(model, {k: v for k, v in PaddedCollator(0)([e]).items()
                                      if k not in ("labels", "shift_labels")},
                              PaddedCollator(0)([e])["shift_labels"], sparse_logits=False) for e in examples)


def _loss_sum(model, collator, examples, sparse_logits):
    batch = collator(examples)
    targets = batch.pop("shift_labels")
    batch.pop("labels")
    return token_loss_sum(model, batch, targets, sparse_logits=sparse_logits)


@pytest.mark.parametrize("arch", TINY_MODELS)
def test_padded_batch_with_sparse_logits_gives_the_unpadded_loss(arch):
    model, tokenizer = load_model(arch)
    model.config.use_cache = False
    examples = _examples(tokenizer)
    reference = _reference_loss_sum(model, examples)
    with torch.no_grad():
        for sparse in (False, True):
            padded = _loss_sum(model, PaddedCollator(tokenizer.pad_token_id), examples, sparse)
            torch.testing.assert_close(padded, reference, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("arch", TINY_MODELS)
def test_packed_batch_gives_the_unpadded_loss_exactly_on_packing_architectures(arch):
    model, tokenizer = load_model(arch)
    model.config.use_cache = False
    examples = _examples(tokenizer)
    with torch.no_grad():
        if model.config.model_type in PACKING_MODEL_TYPES:
            reference = _reference_loss_sum(model, examples)
            packed = _loss_sum(model, PackedCollator(), examples, sparse_logits=True)
            torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-4)
        else:  # the table must not leave out an architecture on which packing would be exact
            batch = PackedCollator()(examples)
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
            alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples])
            assert (logits - alone).abs().max() > 1e-3


@pytest.mark.parametrize("arch", TINY_MODELS)
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_shared_prefix_gives_the_plain_loss_and_gradients_on_listed_architectures(arch, train_on_inputs):
    model, tokenizer = load_model(arch)
    model.config.use_cache = False
    peft_model = attach(model, {"method": "lora", "r": 4, "dropout": 0.0})
    perturb(peft_model, scale=0.1)  # B is zero at init: move it so that the adapter matters
    examples = encode_records(RECORDS[:4], tokenizer, **{**ENCODE, "train_on_inputs": train_on_inputs})[0]
    batch = PaddedCollator(tokenizer.pad_token_id, share_prefix=True)(examples)
    prefix_len = batch.pop("prefix_len")
    assert prefix_len == len("Below is an instruction that describes a task. Write a response that appropriately "
                             "completes the request.\n\n### Instruction:\nAdd ")  # bytes = tokens here
    targets = batch.pop("shift_labels")
    batch.pop("labels")

    def loss_and_grads(prefix):
        loss = token_loss_sum(peft_model, dict(batch), targets, sparse_logits=True, prefix_len=prefix)
        loss.backward()
        grads = [p.grad.clone() for p in peft_model.parameters() if p.requires_grad]
        peft_model.zero_grad()
        return loss.detach(), grads

    plain, plain_grads = loss_and_grads(0)
    shared, shared_grads = loss_and_grads(prefix_len)
    if model.config.model_type in PREFIX_SHARING_MODEL_TYPES:
        torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-3)
        for a, b in zip(shared_grads, plain_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)
    else:  # the table must not leave out an architecture on which sharing would be exact
        assert max((a - b).abs().max() for a, b in zip(shared_grads, plain_grads)) > 1e-2


def test_shared_prefix_length_leaves_every_row_a_token_and_skips_short_prefixes():
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6, 7]]) == 5
    assert shared_prefix_length([[1, 2, 3, 4, 5, 9], [1, 2, 3, 4, 5, 6, 7]]) == 5
    assert shared_prefix_length([[1, 2, 3, 9], [1, 2, 3, 4]]) == 0  # 3 < MIN_SHARED_PREFIX
    assert shared_prefix_length([[1, 2, 3, 4, 5, 6]]) == 0  # one row: nothing to share


def test_seeded_sampler_forms_global_batches_of_similar_lengths_and_replays_the_same_order():
    lengths = [(i * 37) % 101 + 1 for i in range(203)]
    sampler = SeededSampler(lengths, batch_size=8, seed=3, group_by_length=True)
    first = list(sampler)
    assert len(first) == len(sampler) == 200 and len(set(first)) == 200  # 25 whole global batches; 3 left over
    assert list(sampler) == first
    sampler.set_epoch(1)
    assert list(sampler) != first and len(set(list(sampler)) | set(first)) > 200  # others left over
    batches = [first[k:k + 8] for k in range(0, 200, 8)]
    assert max(lengths[i] for i in batches[0]) == max(lengths[i] for i in first)  # the longest batch comes first
    for batch in batches:  # within a global batch, longest first: its micro-batches are slices of similar length
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)
    for micro in (1, 2, 4, 8):  # every micro-batch size splits the same global batches
        padded = sum(max(lengths[i] for i in batch[k:k + micro]) * micro for batch in batches
                     for k in range(0, 8, micro))
        assert sum(lengths[i] for i in first) / padded > 0.9  # little padding
    assert SeededSampler(lengths, batch_size=8, seed=3, group_by_length=True).__iter__().__next__() == first[0]
    small = list(SeededSampler(lengths[:5], batch_size=8, seed=3, group_by_length=True))
    assert sorted(small) == list(range(5))  # fewer examples than a batch: all of them, one batch
    random_order = list(SeededSampler(lengths, 8, seed=3, group_by_length=False))
    assert len(set(random_order)) == 200


# --- training runs ------------------------------------------------------------------------------------------------

def test_finetune_writes_adapter_tokenizer_manifest_and_loss_log(tmp_path, data_file):
    out = finetune(_run(tmp_path, data_file, val_set_size=2, eval_steps=2))
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "manifest.json",
            "loss_log.jsonl", "loss_curve.png"} <= names
    assert "checkpoints" not in names and "run.json" in names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["cutoff_len"] == 256 and manifest["seed"] == 42
    assert manifest["data"]["sha256"] == sha256_file(data_file) and manifest["data"]["train"]["examples"] == 8
    assert manifest["data"]["validation"]["examples"] == 2
    assert 0 < manifest["parameters"]["trainable"] < manifest["parameters"]["total"]
    assert set(manifest["provenance"]["versions"]) >= {"torch", "transformers", "peft", "accelerate"}
    assert "git_commit" in manifest["provenance"] and manifest["training"]["steps"] == 4
    assert manifest["training"]["precision"] == "fp32"  # precision auto, on a CPU
    assert manifest["base_model"] == base_identity("tiny-llama")
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in log if "loss" in e]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert any("eval_loss" in e for e in log)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert manifest["training"]["last_loss"] == losses[-1]
    assert manifest["training"]["mean_loss"] == pytest.approx(sum(losses) / 4, rel=1e-12)
    run = json.loads((out / "run.json").read_text())
    assert run["identity"]["data_sha256"] == sha256_file(data_file) and run["identity"]["learning_rate"] == 1e-2


def test_finetune_logs_every_step_whatever_logging_steps_so_the_curve_is_never_empty(tmp_path, data_file, capsys):
    out = finetune(_run(tmp_path, data_file, max_steps=3, logging_steps=10, progress=False))
    log = [json.loads(line) for line in (out / "loss_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]
    printed = capsys.readouterr()
    assert "[finetune] step 3/3: loss " in printed.out and "[finetune] step 1/3" not in printed.out
    assert "step/s" not in printed.err  # --no-progress: no bar
    with_bar = finetune(_run(tmp_path, data_file, "bar", max_steps=2, logging_steps=1))
    assert "step/s" in capsys.readouterr().err and (with_bar / "loss_curve.png").stat().st_size > 0


def test_training_arguments_pass_report_to_through(tmp_path, data_file):
    from llm_adapters.train.trainer import training_arguments

    config = _run(tmp_path, data_file, report_to="tensorboard")
    assert training_arguments(config, tmp_path, 1, False, "fp32").report_to == ["tensorboard"]
    with pytest.raises(ValueError, match="report_to 'mlflow' is not one of none, tensorboard, wandb"):
        _run(tmp_path, data_file, report_to="mlflow")


@pytest.mark.parametrize("batching", ["length", "packed", "padded"])
def test_the_micro_batch_size_changes_memory_not_the_run_in_every_batching_mode(tmp_path, data_file, batching):
    # Examples of different lengths: per-micro-batch means would weight tokens unequally, the token count doesn't;
    # length grouping by micro-batch (the old sampler) put other examples in each step.
    settings = dict(batch_size=4, max_steps=3, batching=batching)
    runs = [finetune(_run(tmp_path, data_file, f"micro{m}", micro_batch_size=m, **settings)) for m in (4, 2, 1)]
    first, *others = [load_file(p / "adapter_model.safetensors") for p in runs]
    for other in others:
        assert max(float((first[k] - other[k]).abs().max()) for k in first) < 1e-4
    # Adam hides a constant factor in the gradient; the logged loss (mean per label token of the step) does not.
    losses = [[e["loss"] for e in map(json.loads, (p / "loss_log.jsonl").read_text().splitlines()) if "loss" in e]
              for p in runs]
    for other in losses[1:]:
        torch.testing.assert_close(torch.tensor(losses[0]), torch.tensor(other), rtol=1e-5, atol=1e-6)


def test_a_run_killed_for_memory_resumes_with_a_smaller_micro_batch(tmp_path, data_file):
    whole = finetune(_run(tmp_path, data_file, "whole", micro_batch_size=4, max_steps=4, save_steps=2,
                          keep_checkpoints=True))
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)  # as if killed after the step-2 checkpoint: the run's state at step 2
    shutil.rmtree(cut / "checkpoints" / "checkpoint-4")
    for name in ("manifest.json", "adapter_model.safetensors", "adapter_config.json", "loss_log.jsonl"):
        (cut / name).unlink()
    resumed = finetune(_run(tmp_path, data_file, "cut", micro_batch_size=1, max_steps=4, save_steps=2,
                            keep_checkpoints=True))
    a, b = (load_file(p / "adapter_model.safetensors") for p in (whole, resumed))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert manifest["training"]["resumed_from"].endswith("checkpoint-2")
    assert manifest["config"]["micro_batch_size"] == 1 and manifest["training"]["accumulation"] == 4


@pytest.mark.skipif(not __import__("llm_adapters.models").models.cpu_has_native_bf16(),
                    reason="this CPU has no bf16 units")
def test_a_bf16_run_trains_under_bf16_autocast_and_keeps_its_micro_batch_size(tmp_path, data_file, monkeypatch):
    # Found by review: nothing ran `finetune` with precision bf16 end to end (autocast off went unnoticed), and
    # a bf16 run resumed with another micro-batch size although 16-bit sums then round differently.
    seen = set()
    forward = torch.nn.Linear.forward

    def spy(self, x):  # every product of a training step (the frozen base layers and the adapter's)
        if torch.is_grad_enabled():
            seen.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return forward(self, x)

    monkeypatch.setattr(torch.nn.Linear, "forward", spy)
    out = finetune(_run(tmp_path, data_file, precision="bf16", micro_batch_size=2, max_steps=2, save_steps=1))
    assert seen == {(True, torch.bfloat16)}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["training"]["precision"] == "bf16"
    assert {t.dtype for t in load_file(out / "adapter_model.safetensors").values()} == {torch.float32}
    with pytest.raises(RunMismatchError, match=r"micro_batch_size: 2 -> 1"):
        finetune(_run(tmp_path, data_file, precision="bf16", micro_batch_size=1, max_steps=2, save_steps=1))


@pytest.mark.parametrize("method", [m for m in METHODS if METHODS[m].acts_on_input])
def test_finetune_trains_prompt_learning_methods(tmp_path, data_file, method):
    out = finetune(_run(tmp_path, data_file, adapter={"method": method, "num_virtual_tokens": 3}, max_steps=2))
    assert (out / "adapter_model.safetensors").exists()
    with pytest.raises(ValueError, match="batching packed cannot be used with"):
        finetune(_run(tmp_path, data_file, "packed", adapter=method, batching="packed"))


def test_finetune_packed_on_an_architecture_without_support_is_an_error(tmp_path, data_file):
    with pytest.raises(ValueError, match="batching packed needs an architecture"):
        finetune(_run(tmp_path, data_file, base_model="tiny-bloom", batching="packed"))


# --- output folder safety and resume --------------------------------------------------------------------------------

def test_finetune_finished_run_is_kept_refused_when_changed_and_redone_with_overwrite(tmp_path, data_file, capsys):
    config = _run(tmp_path, data_file, max_steps=1)
    out = finetune(config)
    weights = (out / "adapter_model.safetensors").read_bytes()
    mtime = (out / "manifest.json").stat().st_mtime_ns
    assert finetune(config) == out and (out / "manifest.json").stat().st_mtime_ns == mtime  # nothing to redo
    assert "already holds this run, finished" in capsys.readouterr().out
    with pytest.raises(RunMismatchError, match=r"holds a finished run with other settings or inputs "
                                               r"\(learning_rate: 0\.01 -> 0\.02\)"):
        finetune(dataclasses.replace(config, learning_rate=0.02))
    data_file.write_text(json.dumps(RECORDS[::-1]), encoding="utf-8")  # the same path, other content
    with pytest.raises(RunMismatchError, match=r"data_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        finetune(config)
    finetune(dataclasses.replace(config, overwrite=True))
    assert (out / "adapter_model.safetensors").read_bytes() != weights  # retrained on the new data
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        finetune(dataclasses.replace(config, output_dir=str(foreign)))
    assert (foreign / "notes.txt").exists()


def test_finetune_unfinished_run_with_other_settings_names_the_key(tmp_path, data_file):
    out = tmp_path / "out"
    config = _run(tmp_path, data_file)
    identity = {**config.identity(), "learning_rate": 0.5, "device": "cpu", "precision": "fp32", "data_sha256": "x",
                "base_model": base_identity("tiny-llama")}
    rundir.begin(out, rundir.Plan("fresh"), identity, kind="finetune")
    with pytest.raises(RunMismatchError, match=r"holds results of another run with other settings or inputs "
                                               r"\(data_sha256: 'x' -> '[0-9a-f]{64}'; learning_rate: 0\.5 -> 0\.01\)"):
        finetune(config)


_KILLABLE = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {src!r})
    import llm_adapters.train.trainer as trainer
    from llm_adapters.train import finetune, load_config
    if sys.argv[1] == "slow":  # slow the steps down so that the parent can kill the run between checkpoints
        step = trainer.AdapterTrainer.training_step
        def slow_step(self, *args, **kwargs):
            time.sleep(0.15)
            return step(self, *args, **kwargs)
        trainer.AdapterTrainer.training_step = slow_step
    finetune(load_config(**json.loads(sys.argv[2])))
""")


def test_finetune_killed_and_rerun_resumes_and_matches_the_uninterrupted_run(tmp_path, data_file):
    settings = dict(TINY_RUN, data=str(data_file), max_steps=12, save_steps=3,
                    adapter={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1})  # dropout: RNG state resumes too
    script = tmp_path / "run.py"
    script.write_text(_KILLABLE.format(src=str(SRC)))
    killed = dict(settings, output_dir=str(tmp_path / "killed"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, str(script), "slow", json.dumps(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while latest_checkpoint(tmp_path / "killed" / "checkpoints") is None:
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    rerun = subprocess.run([sys.executable, str(script), "fast", json.dumps(killed)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert manifest["training"]["resumed_from"] and manifest["training"]["steps"] == 12

    uninterrupted = finetune(load_config(**dict(settings, output_dir=str(tmp_path / "straight"))))
    resumed = load_file(tmp_path / "killed" / "adapter_model.safetensors")
    straight = load_file(uninterrupted / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    # The manifest's losses describe the whole run, not the steps since the resume.
    straight_manifest = json.loads((uninterrupted / "manifest.json").read_text())
    for key in ("last_loss", "mean_loss"):
        assert manifest["training"][key] == pytest.approx(straight_manifest["training"][key], rel=1e-5)
    logs = [[json.loads(line)["step"] for line in (folder / "loss_log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)] for folder in (tmp_path / "killed", uninterrupted)]
    assert logs[0] == logs[1] == list(range(1, 13))


# --- config ---------------------------------------------------------------------------------------------------------

def test_config_every_field_has_help():
    assert all(f.metadata.get("help") for f in FIELDS.values())


def test_config_unknown_key_names_it_and_the_accepted_keys(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: d.json\noutput_dir: o\nlearning_rte: 1e-4\n")
    with pytest.raises(ValueError, match=r"unknown key 'learning_rte'.*Did you mean: learning_rate.*Accepted: data"):
        load_config(path)


def test_config_reports_all_problems_at_once():
    with pytest.raises(ValueError) as error:
        load_config(data="d.json", output_dir="o", batch_size=10, micro_batch_size=4, precision="fp8",
                    adapter="no-such-method", cutoff_len=0)
    message = str(error.value)
    for part in ("batch_size 10 is not a multiple", "precision 'fp8'", "adapter:", "cutoff_len must"):
        assert part in message


def test_config_yaml_string_numbers_are_coerced_and_flags_override_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data: d.json\noutput_dir: o\nlearning_rate: 3e-4\nnum_epochs: 2\ntrain_on_inputs: true\n")
    assert load_config(path).learning_rate == 3e-4  # PyYAML reads 3e-4 as a string
    args = make_parser().parse_args(["finetune", "--config", str(path), "--learning-rate", "1e-3",
                                     "--no-train-on-inputs", "--adapter", "{preset: paper-lora, r: 8}"])
    config = configs.load(FinetuneConfig, args.config, **configs.given(args, FinetuneConfig))
    assert (config.learning_rate, config.num_epochs, config.train_on_inputs) == (1e-3, 2.0, False)
    assert config.spec.r == 8 and config.spec.alpha == 64


@pytest.mark.parametrize("overrides,message", [
    ({"precision": "bf16"}, "bf16 needs a CUDA GPU"),
    ({"precision": "fp16"}, "fp16 needs a CUDA GPU"),
    ({"load_in_8bit": True}, "load_in_8bit needs a CUDA GPU"),
    ({"load_in_4bit": True}, "load_in_4bit needs a CUDA GPU"),
])
def test_finetune_gpu_only_settings_fail_clearly_on_cpu(tmp_path, data_file, overrides, message, monkeypatch):
    import llm_adapters.models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, even where a GPU is present
    monkeypatch.setattr(llm_adapters.models, "cpu_has_native_bf16", lambda: False)  # ... and without bf16 units
    with pytest.raises(ValueError, match=message):
        finetune(_run(tmp_path, data_file, **overrides))


def test_cli_finetune_prints_one_line_errors(tmp_path, data_file, capsys):
    from llm_adapters.cli import main

    code = main(["finetune", "--data", str(data_file), "--output-dir", str(tmp_path / "o"), "--precision", "fp8"])
    assert code == 2 and "precision 'fp8' is not one of" in capsys.readouterr().err


@pytest.mark.parametrize("adapter, where, message", [
    ("prefix", {"ACCELERATE_USE_FSDP": "true"}, "method 'prefix' cannot train under FSDP"),
    ("pissa", {"ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "method 'pissa' decomposes whole base weights"),
])
def test_finetune_methods_that_cannot_shard_are_refused_before_the_model_loads(tmp_path, data_file, monkeypatch,
                                                                             adapter, where, message):
    import llm_adapters.train.run as run

    for key, value in where.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(run, "load_model", lambda *a, **k: pytest.fail("the model must not load"))
    with pytest.raises(ValueError, match=message):
        finetune(_run(tmp_path, data_file, adapter=adapter))
    zero3 = tmp_path / "zero3.json"
    zero3.write_text('{"zero_optimization": {"stage": 3}}')
    monkeypatch.delenv(next(iter(where)))
    with pytest.raises(ValueError, match=message.replace("FSDP", "DeepSpeed ZeRO-3")):
        finetune(_run(tmp_path, data_file, adapter=adapter, deepspeed=str(zero3)))


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_finetune_saves_pissa_and_olora_as_a_lora_that_loads_onto_the_untouched_base(tmp_path, data_file, method):
    from peft import PeftModel

    from llm_adapters.methods import load_adapter

    out = finetune(_run(tmp_path, data_file, adapter={"method": method, "r": 4, "dropout": 0.0}, max_steps=2,
                        save_steps=2, keep_checkpoints=True))
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True and not (out / "initial-adapter").exists()
    # The trained model as training saw it: PEFT redoes the decomposition of a fresh base, then loads the
    # checkpoint's raw adapter. The saved adapter must give the same model on an untouched base.
    trained = PeftModel.from_pretrained(load_model("tiny-llama")[0], str(latest_checkpoint(out / "checkpoints"))).eval()
    converted = load_adapter(load_model("tiny-llama")[0], out)
    batch = byte_tokenizer()(["Add 1 and 2.", "Add 13 and 4."], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(converted(**batch).logits, trained(**batch).logits, rtol=0, atol=2e-4)
        assert not torch.allclose(converted(**batch).logits, load_model("tiny-llama")[0](**batch).logits, atol=1e-3)


def test_a_run_written_before_the_device_was_in_its_identity_still_resumes(tmp_path, data_file):
    # Found by review: the identity gained `device`, so every earlier folder was refused as "device: None -> cpu".
    config = _run(tmp_path, data_file, max_steps=2, save_steps=1)
    out = finetune(config)
    saved = json.loads((out / "run.json").read_text())
    del saved["identity"]["device"]
    (out / "run.json").write_text(json.dumps(saved))
    assert finetune(config) == out  # found finished, as before; nothing refused
    saved["identity"]["device"] = "cuda"  # a recorded device that differs is still refused
    (out / "run.json").write_text(json.dumps(saved))
    with pytest.raises(RunMismatchError, match=r"device: 'cuda' -> 'cpu'"):
        finetune(config)
