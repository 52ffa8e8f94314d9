"""Grouped-query attention with a group's query heads stacked as rows (`eval/attention.py`): the attention formula
to fp32 rounding for any number of tokens, the model's logits unchanged, the stacked path taken under a mask,
the model's setting restored, and models it does not apply to left alone."""
from __future__ import annotations

import math

import pytest
import torch

from llm_adapters.eval import attention
from llm_adapters.eval.attention import grouped_attention, grouped_sdpa
from llm_adapters.models import load_model
from helpers import perturb

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Module:
    num_key_value_groups = 3


def _formula(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) over the allowed columns) v, query head h on key/value head h // groups, in
    transformers' output layout (batch, tokens, heads, dim)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    return (weights @ value).transpose(1, 2)


@pytest.mark.parametrize("tokens", [1, 3, 7])
@pytest.mark.parametrize("mask_rows", [1, 4])
def test_stacked_heads_give_the_attention_formula(tokens: int, mask_rows: int, monkeypatch: pytest.MonkeyPatch
                                                  ) -> None:
    generator = torch.Generator().manual_seed(tokens)
    batch, heads, columns, dim = 4, 9, 23, 16
    query = torch.randn(batch, tokens, heads, dim, generator=generator).transpose(1, 2)  # as the models lay it out
    key = torch.randn(batch, 3, columns, dim, generator=generator)
    value = torch.randn(batch, 3, columns, dim, generator=generator)
    mask = torch.rand(mask_rows, 1, tokens, columns, generator=generator) > 0.4
    mask[..., -1] = True  # every query sees at least one column
    delegated = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: delegated.append(1))
    out, weights = grouped_sdpa(_Module(), query, key, value, mask)
    assert delegated == [] and weights is None
    torch.testing.assert_close(out, _formula(query, key, value, mask.expand(batch, -1, -1, -1)), rtol=1e-5,
                               atol=1e-5)


def test_what_it_does_not_handle_goes_to_transformers_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    query, key = torch.randn(2, 9, 3, 8), torch.randn(2, 3, 5, 8)
    mask = torch.ones(2, 1, 3, 5, dtype=torch.bool)
    delegated = []
    monkeypatch.setattr(attention, "sdpa_attention_forward", lambda *a, **k: delegated.append(k) or "sdpa")
    assert grouped_sdpa(_Module(), query, key, key, None) == "sdpa"  # no mask: SDPA's causal flag
    assert grouped_sdpa(_Module(), query, key, key, mask.float()) == "sdpa"  # an additive mask
    assert grouped_sdpa(_Module(), query, key, key, mask, dropout=0.1) == "sdpa"
    assert grouped_sdpa(_Module(), query, key, key, mask, softcap=30.0) == "sdpa"
    plain = _Module()
    plain.num_key_value_groups = 1
    assert grouped_sdpa(plain, torch.randn(2, 3, 3, 8), key, key, mask) == "sdpa"  # nothing to group
    assert len(delegated) == 5 and delegated[2]["dropout"] == 0.1


def test_model_logits_unchanged_the_stacked_path_taken_and_the_setting_restored(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model("tiny-llama")
    assert model.config.num_attention_heads > model.config.num_key_value_heads
    perturb(model, scale=0.02)
    model.eval()
    ids = torch.tensor([[0, 0, 5, 6, 7, 9], [4, 5, 6, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # left padding: transformers passes a mask
    shapes = []  # of the queries the attention kernel receives
    kernel = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda query, *a, **k: shapes.append(tuple(query.shape)) or kernel(query, *a, **k))
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with grouped_attention(model) as used:
            shapes.clear()
            inside = model(input_ids=ids, attention_mask=mask).logits
        groups = model.config.num_attention_heads // model.config.num_key_value_heads
        # one kernel call a layer, on the key/value heads with the group's query heads stacked as rows
        assert used
        assert shapes == [(2, model.config.num_key_value_heads, groups * 6, 16)] * model.config.num_hidden_layers
        assert model.config._attn_implementation == "sdpa"
        with pytest.raises(RuntimeError, match="boom"), grouped_attention(model):
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(inside, plain, rtol=1e-5, atol=1e-5)


def test_eager_and_composite_models_and_nested_blocks_are_left_as_they_are(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_model("tiny-llama")
    model.config._attn_implementation = "eager"
    with grouped_attention(model) as used:
        assert not used and model.config._attn_implementation == "eager"
    model.config._attn_implementation = "sdpa"
    with monkeypatch.context() as patch:  # a composite model's config
        patch.setattr(type(model.config), "sub_configs", property(lambda self: {"vision_config": type(self)}))
        with grouped_attention(model) as used:
            assert not used and model.config._attn_implementation == "sdpa"
    with grouped_attention(model) as outer:
        with grouped_attention(model) as inner:
            assert model.config._attn_implementation == attention.NAME
        assert outer and not inner and model.config._attn_implementation == attention.NAME
    assert model.config._attn_implementation == "sdpa"
