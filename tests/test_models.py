"""Base models: tiny random models, meta presets with the real parameter counts, the embedded SmolLM2."""
from __future__ import annotations

import pytest
import torch

from llm_adapters.methods import attach
from llm_adapters.models import META_PRESETS, TINY_MODELS, load_model

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
