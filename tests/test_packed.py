"""Linear layers through oneDNN with packed weights (`eval/packed.py`): the same outputs as `F.linear` to fp32
rounding, on plain and LoRA-adapted models; forwards restored after the block; gradients, foreign forwards and
a lack of memory leave layers on the usual path."""
from __future__ import annotations

import pytest
import torch

from llm_adapters.eval import packed as packed_module
from llm_adapters.eval.loglik import continuation_logliks
from llm_adapters.eval.packed import packed_linears, plain_linears
from llm_adapters.methods import attach
from llm_adapters.models import load_model
from helpers import perturb

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IDS = torch.tensor([[5, 17, 99, 3, 250, 42, 7], [1, 2, 3, 4, 5, 6, 8]])


def _linears(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-opt"])
def test_packed_logits_match_plain_and_forwards_come_back(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model(name)
    model.eval()
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        plain = model(input_ids=IDS).logits
        with packed_linears(model) as count:
            assert count == len(_linears(model)) > 0
            inside = model(input_ids=IDS).logits
            assert len(calls) == count  # every layer multiplied through oneDNN, once for this forward
        after = model(input_ids=IDS).logits
    assert not any("forward" in m.__dict__ for m in _linears(model))
    torch.testing.assert_close(inside, plain, rtol=1e-5, atol=1e-5)
    assert torch.equal(after, plain)


def test_products_of_many_rows_take_f_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model("tiny-llama")
    model.eval()
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise",
                        lambda *a: calls.append(a[0].numel() // a[0].shape[-1]) or real(*a))  # rows
    limit = packed_module._MAX_ROWS
    at_limit, over = IDS[:1, :1].repeat(2, limit // 2), IDS[:1, :1].repeat(1, limit + 1)  # (2, 256), (1, 513)
    with torch.no_grad():
        plain = model(input_ids=over).logits
        with packed_linears(model) as count:
            model(input_ids=at_limit)
            assert calls == [limit] * count  # every layer, through oneDNN
            calls.clear()
            inside = model(input_ids=over).logits
    assert calls == []
    assert torch.equal(inside, plain)


def test_packed_lora_model_matches_plain() -> None:
    model, _ = load_model("tiny-llama")
    torch.manual_seed(0)  # LoRA's A is drawn from the global generator: the same model every run
    peft_model = attach(model, "lora")
    perturb(peft_model)  # LoRA's B starts at zero: an untouched adapter would test the base model only
    peft_model.eval()
    with torch.no_grad():
        plain = peft_model(input_ids=IDS).logits
        with packed_linears(peft_model) as count:
            inside = peft_model(input_ids=IDS).logits
    lora_pairs = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A.default"))
    assert lora_pairs > 0 and count == len(_linears(peft_model))
    # fp32 rounding through another kernel: up to 1.2e-5 on these logits (|x| <= 0.7) over LoRA seeds 0-7
    torch.testing.assert_close(inside, plain, rtol=1e-5, atol=5e-5)


def test_gradients_take_the_usual_path_inside_the_block() -> None:
    model, _ = load_model("tiny-llama")
    model.eval()
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with packed_linears(model) as count:
        assert count > 0
        model(input_ids=IDS, labels=IDS).loss.backward()
    for parameter, grad in zip(model.parameters(), expected):
        assert torch.equal(parameter.grad, grad)


def test_nothing_packed_without_memory_or_with_a_foreign_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model("tiny-llama")
    size = sum(m.weight.numel() * 4 for m in _linears(model))
    monkeypatch.setattr(packed_module, "_free_memory", lambda: 4 * size - 1)  # the copies would take over 1/4
    with packed_linears(model) as count:
        assert count == 0 and not any("forward" in m.__dict__ for m in _linears(model))
    monkeypatch.setattr(packed_module, "_free_memory", lambda: 4 * size)
    with packed_linears(model) as count:
        assert count == len(_linears(model))
    hooked = _linears(model)[0]
    own = hooked.forward = lambda x: torch.zeros(1)  # as accelerate's hooks replace a forward
    with packed_linears(model) as count:
        assert count == len(_linears(model)) - 1 and hooked.forward is own
    assert hooked.forward is own


def test_a_weight_changed_inside_the_block_is_used_as_it_now_is() -> None:
    model, _ = load_model("tiny-llama")
    model.eval()
    with torch.no_grad(), packed_linears(model):
        model.lm_head.weight.mul_(2)  # an optimiser step would change it in place the same way
        inside = model(input_ids=IDS).logits
    with torch.no_grad():
        torch.testing.assert_close(inside, model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_a_weight_or_bias_replaced_inside_the_block_is_used() -> None:
    model, _ = load_model("tiny-opt")  # Linear layers with biases
    model.eval()
    first, second = [m for m in _linears(model) if m.bias is not None][-2:]
    with torch.no_grad(), packed_linears(model):
        first.bias = torch.nn.Parameter(torch.randn_like(first.bias))  # new tensors, as loading weights makes
        second.weight = torch.nn.Parameter(second.weight * 2)
        inside = model(input_ids=IDS).logits
    with torch.no_grad():
        torch.testing.assert_close(inside, model(input_ids=IDS).logits, rtol=1e-5, atol=1e-5)


def test_blocks_nest() -> None:
    model, _ = load_model("tiny-llama")
    with packed_linears(model) as outer:
        forwards = {m: m.forward for m in _linears(model)}
        with packed_linears(model) as inner:
            assert inner == 0
        assert all(m.forward is forwards[m] for m in _linears(model)) and outer == len(forwards)
    assert not any("forward" in m.__dict__ for m in _linears(model))


def test_log_likelihoods_keep_f_linear_inside_a_packed_block(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_model("tiny-llama")
    pairs = [("Question: is water wet?\nAnswer:", " the correct answer is true"),
             ("Question: is water wet?\nAnswer:", " the correct answer is false"), ("Q: 2+2?", " 4")]
    expected = continuation_logliks(model, tokenizer, pairs)
    calls = []
    real = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *a: calls.append(1) or real(*a))
    with packed_linears(model) as count:
        inside = continuation_logliks(model, tokenizer, pairs)
        with torch.no_grad(), plain_linears():
            model(input_ids=IDS)
        assert not calls
        with torch.no_grad():
            model(input_ids=IDS)
        assert len(calls) == count > 0  # the block's layers are packed again after `plain_linears`
    assert inside == expected
