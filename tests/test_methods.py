"""Every method x tiny architecture: trainability, identity at init, training moves logits, batched generation."""
from __future__ import annotations

import pytest
import torch

from llm_adapters.methods import METHODS, attach
from llm_adapters.models import TINY_MODELS, load_model
from helpers import one_step, perturb

SMALL = {"bottleneck_size": 8, "r": 4, "num_virtual_tokens": 3}
IDENTITY_AT_INIT = [m for m in METHODS if not METHODS[m].acts_on_input]  # prompt learning adds tokens by design
# Every method on every tiny architecture, but those a method says it cannot do (OLoRA on GPT-2's Conv1D).
CELLS = [(arch, method) for arch in TINY_MODELS for method in METHODS if METHODS[method].conv1d or arch != "tiny-gpt2"]
PROMPTS = ["Hello there, how", "A", "The quick brown fox jumps"]


def _batch(tokenizer, texts=PROMPTS):
    return tokenizer(texts, return_tensors="pt", padding=True)


@pytest.mark.parametrize("arch,method", CELLS)
def test_attach_backward_reaches_only_adapter_parameters(arch, method):
    model, tokenizer = load_model(arch)
    base_names = {name for name, _ in model.named_parameters()}
    peft_model = attach(model, {"method": method, **SMALL})
    peft_model.train()
    batch = _batch(tokenizer)
    loss = peft_model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    with_grad = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert trainable, "no trainable parameters"
    assert with_grad <= trainable
    assert with_grad, "no adapter parameter received a gradient"
    # No parameter of the base model (under its PEFT name) is trainable.
    for name in trainable:
        short = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert short not in base_names, f"base parameter {name} is trainable"



@pytest.mark.parametrize("arch,method", [cell for cell in CELLS if cell[1] in IDENTITY_AT_INIT])
def test_attach_with_zero_init_keeps_base_logits(arch, method):
    model, tokenizer = load_model(arch)
    batch = _batch(tokenizer)
    with torch.no_grad():
        base_logits = model(**batch).logits
    peft_model = attach(model, {"method": method, "init": "zeros", **SMALL}).eval()
    with torch.no_grad():
        adapted = peft_model(**batch).logits
    torch.testing.assert_close(adapted, base_logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,method", CELLS)
def test_one_optimizer_step_changes_logits(arch, method):
    model, tokenizer = load_model(arch)
    before, after = one_step(attach(model, {"method": method, **SMALL}), _batch(tokenizer), lr=1e-2)
    assert not torch.allclose(before, after, atol=1e-6)


def _strip(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=True)


def _greedy_by_forward(model, tokenizer, prompt, steps):
    """Reference decoding: full forward (no cache, no generate) and argmax, one token at a time."""
    ids = tokenizer([prompt], return_tensors="pt").input_ids
    new = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        token = int(logits[0, -1].argmax())
        new.append(token)
        if token == tokenizer.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return _strip(tokenizer, new)


@pytest.mark.parametrize("arch,method", CELLS)
def test_batched_generation_equals_single_and_reference(arch, method):
    model, tokenizer = load_model(arch)
    peft_model = attach(model, {"method": method, **SMALL})
    perturb(peft_model)
    peft_model.eval()
    steps = 5
    batch = _batch(tokenizer)
    out = peft_model.generate(**batch, max_new_tokens=steps, do_sample=False)
    batched = [_strip(tokenizer, row[batch["input_ids"].shape[1]:]) for row in out]
    single = []
    for prompt in PROMPTS:
        one = tokenizer([prompt], return_tensors="pt")
        row = peft_model.generate(**one, max_new_tokens=steps, do_sample=False)[0]
        single.append(_strip(tokenizer, row[one["input_ids"].shape[1]:]))
    assert batched == single
    # And generation uses the adapter as the forward pass does (prefix not dropped, prompts not re-injected),
    # for every prompt, the padded ones included.
    assert single == [_greedy_by_forward(peft_model, tokenizer, prompt, steps) for prompt in PROMPTS]


def test_attach_olora_on_gpt2_conv1d_is_a_clear_error():
    model, _ = load_model("tiny-gpt2")
    with pytest.raises(ValueError, match="method 'olora' does not support GPT-2's Conv1D layers"):
        attach(model, {"method": "olora", "r": 4})


@pytest.mark.parametrize("peft_type", __import__("llm_adapters.methods", fromlist=["peft_types"]).peft_types())
def test_every_listed_peft_type_attaches_to_tiny_llama_or_says_why_in_one_line(peft_type, capsys):
    # `llm-adapters methods` lists these; with their defaults some cannot fit a 64-wide model (c3a's block size,
    # shira's rank): the user then reads one line naming the method and PEFT's reason, never a traceback.
    from llm_adapters.cli import main

    code = main(["params", "--model", "tiny-llama", "--method", f"peft:{peft_type}", "--json"])
    captured = capsys.readouterr()
    if code == 0:
        assert '"trainable"' in captured.out
    else:
        lines = captured.err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in captured.err
        assert lines[0].startswith(f"llm-adapters params: error: peft:{peft_type} ") and "PEFT says: " in lines[0]


@pytest.mark.parametrize("options,expected", [
    ("{bad", "peft_options is not a valid mapping (expected ',' or '}', but got '<stream end>'): '{bad'"),
    ("[1, 2]", "peft_options must be a mapping of VeraConfig fields, got '[1, 2]'"),
    ("{r: -3}", "peft:vera with options {'r': -3} cannot be attached to LlamaForCausalLM: PEFT says: Trying to "
                "create tensor with negative dimension -3"),
])
def test_bad_peft_options_are_one_line_naming_the_option(options, expected, capsys):
    from llm_adapters.cli import main

    assert main(["params", "--model", "tiny-llama", "--method", "peft:vera", "--peft-options", options]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1
