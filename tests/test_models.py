"""Base models: tiny random models, meta presets with the real parameter counts, the embedded SmolLM2."""
from __future__ import annotations

import pytest
import torch

from llm_adapters.files import sha256_file

from llm_adapters.methods import attach
from llm_adapters.models import META_PRESETS, TINY_MODELS, base_identity, load_model, resolve_device, resolve_dtype

# original-system.md A.6
BASE_SIZES = {"llama-7b": 6_738_415_616, "llama-13b": 13_015_864_320, "bloomz-7b1": 7_069_016_064,
              "gpt-j-6b": 6_050_882_784}


@pytest.mark.parametrize("name", META_PRESETS)
def test_meta_preset_has_the_real_parameter_count_and_no_memory(name):
    model, tokenizer = load_model(name)
    assert tokenizer is None
    assert sum(p.numel() for p in model.parameters()) == BASE_SIZES[name]
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tiny_model_pads_left_with_a_pad_token_inside_the_vocabulary(name):
    model, tokenizer = load_model(name)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id < model.config.vocab_size
    assert len(tokenizer) <= model.get_input_embeddings().num_embeddings
    batch = tokenizer(["a", "abc"], return_tensors="pt", padding=True)
    assert batch["attention_mask"].tolist() == [[0, 0, 1], [1, 1, 1]]


def test_tiny_model_is_reproducible_for_a_seed():
    first, _ = load_model("tiny-llama", seed=3)
    second, _ = load_model("tiny-llama", seed=3)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


def test_load_model_places_on_the_device_in_the_dtype_asked_for():
    model, _ = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # auto on a CPU: fp32
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("device, dtype, message", [
    ("cuda", "auto", "device 'cuda' asked for, but this machine has no CUDA GPU"),
    ("tpu", "auto", "unknown device 'tpu'; accepted: auto, cpu, cuda, cuda:N"),
    ("cpu", "fp8", "unknown dtype 'fp8'; accepted: auto, float32, bfloat16, float16"),
])
def test_load_model_bad_device_or_dtype_is_one_clear_line(device, dtype, message, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=message):
        load_model("tiny-llama", device=device, dtype=dtype)


def test_base_identity_is_content_only_never_a_path_or_a_version(tmp_path, monkeypatch):
    import hashlib
    import json
    import shutil

    from llm_adapters import models

    tiny = base_identity("tiny-llama")
    settings = {"vocab_size": 260, **models._TINY["tiny-llama"]}
    assert tiny == {"name": "tiny-llama",
                    "config_sha256": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()}
    monkeypatch.setitem(models._TINY, "tiny-llama", {**models._TINY["tiny-llama"], "num_hidden_layers": 3})
    assert base_identity("tiny-llama") != tiny  # another architecture, another identity
    monkeypatch.undo()
    embedded = base_identity("smollm2-135m")
    assert set(embedded) == {"name", "sha256"} and embedded["sha256"] == sha256_file(models.embedded_gguf_path())
    model, tokenizer = load_model("tiny-llama")
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    first = base_identity(str(tmp_path / "m"))
    assert set(first) == {"sha256"} and len(first["sha256"]) == 64
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    (tmp_path / "m").rename(tmp_path / "moved")
    assert base_identity(str(tmp_path / "copy")) == base_identity(str(tmp_path / "moved")) == first
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "moved")  # the same folder, other weights
    assert base_identity(str(tmp_path / "moved"))["sha256"] != first["sha256"]


def test_unknown_model_name_lists_the_built_in_names():
    with pytest.raises(ValueError, match="cannot load model 'tiny-llamma'.*built-in names: smollm2-135m, tiny-llama"):
        load_model("tiny-llamma")


@pytest.mark.slow
def test_embedded_model_loads_from_the_gguf_cache_and_generates_batched_like_single():
    model, tokenizer = load_model("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    peft_model = attach(model, "paper-lora").eval()
    prompts = ["The capital of France is", "2 + 2 ="]
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    out = peft_model.generate(**batch, max_new_tokens=4, do_sample=False)
    batched = [tokenizer.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    single = []
    for prompt in prompts:
        one = tokenizer([prompt], return_tensors="pt")
        row = peft_model.generate(**one, max_new_tokens=4, do_sample=False)[0]
        single.append(tokenizer.decode(row[one["input_ids"].shape[1]:], skip_special_tokens=True))
    assert batched == single
    assert "Paris" in batched[0]  # zero-initialised LoRA keeps the base model's answer
