"""bf16 on a CPU with bf16 units: evaluation with bf16 products and fp32 activations (row-local products: a row's
bits whatever the other rows), and mixed-precision training (fp32 master weights, bf16 products)."""
from __future__ import annotations


import pytest
import torch

from llm_adapters.cli import main
from llm_adapters.eval import packed as packed_module
from llm_adapters.eval.packed import bf16_products
from llm_adapters.methods import attach
from llm_adapters.models import cpu_has_native_bf16, load_model
from helpers import perturb

pytestmark = pytest.mark.usefixtures("one_torch_thread")
needs_bf16_units = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no bf16 units")
IDS = torch.tensor([[5, 17, 99, 3, 250, 42, 7], [1, 2, 3, 4, 5, 6, 8]])


@needs_bf16_units
@pytest.mark.parametrize("k,n", [(576, 1536), (1536, 576), (576, 49152), (4096, 11008), (11008, 4096), (64, 260)])
def test_a_bf16_product_gives_a_row_the_same_bits_whatever_the_other_rows(k: int, n: int) -> None:
    # The fact the engine's batch invariance in bf16 rests on (oneDNN sums a row in the same order for any
    # number of rows from two on; a single row goes with a copy of itself). If an upgrade of torch or oneDNN
    # changes it, this fails, and `decoding.batch_invariant` must no longer claim bf16 products.
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, k, generator=generator) / k ** 0.5)
    rows = torch.randn(600, k, generator=generator)
    with torch.no_grad(), bf16_products(layer):
        reference = layer(rows)
        for count in (1, 2, 3, 7, 33, 512):
            for start in range(0, min(600, 16 * count) - count + 1, count):
                assert torch.equal(layer(rows[start:start + count]), reference[start:start + count])
        assert torch.equal(layer(rows[None, 5:9]), reference[None, 5:9])  # any leading dimensions


def _reference_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A Linear layer with bf16 products, computed independently: operands rounded to bf16, products summed in
    float64, the result rounded to bf16 and handed back in the input's dtype, the bias added in fp32."""
    out = (x.to(torch.bfloat16).double() @ weight.to(torch.bfloat16).double().T).to(torch.bfloat16).to(x.dtype)
    return out if bias is None else out + bias


@needs_bf16_units
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt"])
def test_bf16_products_match_an_independent_bf16_product_and_keep_activations_fp32(name: str, monkeypatch
                                                                                  ) -> None:
    model, _ = load_model(name)
    peft_model = attach(model, {"method": "lora", "r": 4})
    perturb(peft_model)  # LoRA's B starts at zero
    peft_model.eval()
    with torch.no_grad():
        full = peft_model(input_ids=IDS).logits
        with bf16_products(peft_model) as count:
            assert count == sum(type(m) is torch.nn.Linear for m in peft_model.modules())
            inside = peft_model(input_ids=IDS).logits
        monkeypatch.setattr(torch.nn.Linear, "forward", lambda self, x: _reference_linear(x, self.weight, self.bias))
        reference = peft_model(input_ids=IDS).logits
    assert inside.dtype == torch.float32
    assert not any("forward" in m.__dict__ for m in peft_model.modules())  # restored
    # sums in another order round to another bf16 value now and then, and the next layers carry that step on: a
    # bf16 step of a logit, or of the largest logit for the small ones (atol 1e-3 failed at 0.0015 on a logit
    # of 0.05 once other tests had run first)
    torch.testing.assert_close(inside, reference, rtol=2 ** -7, atol=2 ** -7 * reference.abs().max().item())
    assert (inside - full).abs().max() > (inside - reference).abs().max()  # not the fp32 model's logits


@needs_bf16_units
def test_the_head_argmax_is_that_of_exact_sums_where_bf16_rounding_ties_logits() -> None:
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(64, 32, generator=generator).to(torch.bfloat16)
    weight = torch.randn(500, 32, generator=generator).to(torch.bfloat16)
    rounded = torch.nn.functional.linear(x, weight).float()  # bf16 results: many near-equal logits tie
    exact = x.double() @ weight.double().T
    refined = packed_module._refine_top(rounded, x, weight)
    ties = sum(int((row == row.max()).sum() > 1) for row in rounded)
    assert ties > 0  # the case the refinement is for happens here
    assert torch.equal(refined.argmax(-1), exact.argmax(-1))
    assert not torch.equal(rounded.argmax(-1), exact.argmax(-1))


@needs_bf16_units
def test_a_weight_changed_inside_the_block_is_packed_again() -> None:
    model, _ = load_model("tiny-llama")
    model.eval()
    with torch.no_grad(), bf16_products(model):
        before = model(input_ids=IDS).logits
        model.lm_head.weight.mul_(2)
        after = model(input_ids=IDS).logits
        reference = _reference_linear(model.model(input_ids=IDS).last_hidden_state, model.lm_head.weight, None)
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, reference, rtol=2 ** -7, atol=1e-3)


# --- training -------------------------------------------------------------------------------------------------------

@needs_bf16_units
def test_bf16_training_gradients_match_fp32_within_bf16_tolerance() -> None:
    from llm_adapters.train.trainer import token_loss_sum

    grads = {}
    for precision in ("fp32", "bf16"):
        model, tokenizer = load_model("tiny-llama", dtype="bfloat16" if precision == "bf16" else "float32")
        torch.manual_seed(0)
        peft_model = attach(model, {"method": "lora", "r": 4, "dropout": 0.0})
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()  # fp32 master weights, as finetune keeps them
        perturb(peft_model, scale=0.05)  # off the identity start, at a size training reaches (0.5 saturates)
        peft_model.train()
        targets = torch.cat([IDS[:, 1:], torch.full((2, 1), -100)], dim=1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = token_loss_sum(peft_model, {"input_ids": IDS}, targets, sparse_logits=True)
        assert loss.dtype == torch.float32
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in peft_model.parameters() if p.requires_grad])
        assert all(p.dtype == torch.float32 for p in peft_model.parameters() if p.requires_grad)
    fp32, bf16 = grads["fp32"], grads["bf16"]
    cosine = torch.nn.functional.cosine_similarity(fp32, bf16, dim=0)
    # bf16 has 8 bits of mantissa: products off by ~0.4 %, sums in fp32 (measured: cosine 0.99996, 0.9 %)
    assert cosine > 0.999 and (bf16 - fp32).norm() / fp32.norm() < 0.03


def test_precision_bf16_is_one_line_on_a_cpu_without_bf16_units(tmp_path, monkeypatch, capsys) -> None:
    from llm_adapters import models

    monkeypatch.setattr(models, "_cpu_bf16_flags", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "a", "output": "b"}]')
    code = main(["finetune", "--base-model", "tiny-llama", "--data", str(data), "--output-dir", str(tmp_path / "o"),
                 "--precision", "bf16"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not (tmp_path / "o").exists()
    assert "precision bf16 needs a CUDA GPU with bf16 support or a CPU with bf16 units" in err


@needs_bf16_units
def test_bf16_products_that_would_not_fit_in_memory_are_one_line(monkeypatch) -> None:
    from llm_adapters.errors import UserError

    model, _ = load_model("tiny-llama")
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    head = model.get_output_embeddings()
    size = sum(m.weight.numel() * (4 if m is head else 2) for m in linears)  # bf16 copies, the head's twice
    monkeypatch.setattr(packed_module, "_free_memory", lambda: size - 1)
    with pytest.raises(UserError, match=r"bf16 products need 0\.0 GiB for bf16 copies of the weights and 0\.0 GiB "
                                        r"is free; use --dtype float32"):
        with bf16_products(model):
            pass
    monkeypatch.setattr(packed_module, "_free_memory", lambda: size)
    with bf16_products(model) as count:
        assert count == len(linears)
