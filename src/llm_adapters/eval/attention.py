"""Grouped-query attention on the CPU that reads each key/value head once.

In grouped-query attention (SmolLM2: 9 query heads, 3 key/value heads) several query heads share one key/value
head. transformers' SDPA path under a mask either copies every layer's keys/values once per query head
(`repeat_kv`) or lets torch's kernel take the groups (`enable_gqa`); on the CPU that kernel still walks a key/value
head's cache once per query head. A decoding step's attention is bound by reading the cache, so it pays three
times over: a third of a 32-row, 2-token step on 2 cores (112 of 317 ms under the profiler). Here the query
heads of a group are stacked as one head's query rows (what transformers itself does for one token a row,
`pack_gqa`, for any number of tokens), their mask repeated to match, and the kernel reads each cache once. Only
the rounding of the sums changes (a few 1e-7).

The function is registered with transformers' attention and mask interfaces under its own name and selected
for one forward pass at a time (`grouped_attention`); everything it does not handle goes to transformers' SDPA.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "llm_adapters_grouped_sdpa"


def grouped_sdpa(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (batch, heads, tokens, dim), key/value (batch,
    key/value heads, columns, dim), a boolean mask (batch or 1, 1, tokens, columns); returns (batch, tokens, heads,
    dim). Without a mask, with dropout or with anything SDPA adds to the scores, transformers' SDPA runs."""
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, tokens, dim = query.shape
    columns = key.shape[2]
    if (groups == 1 or attention_mask is None or attention_mask.dtype != torch.bool or dropout
            or attention_mask.shape[1:] != (1, tokens, columns)
            or any(kwargs.get(name) is not None for name in ("position_bias", "softcap", "s_aux", "sinks"))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # head h uses key/value head h // groups (`repeat_kv`): a group's heads are neighbours, stacked as rows
    stacked = query.reshape(batch, heads // groups, groups * tokens, dim)
    mask = attention_mask.expand(-1, groups, -1, -1).reshape(attention_mask.shape[0], 1, groups * tokens, columns)
    out = torch.nn.functional.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, tokens, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, grouped_sdpa)
AttentionMaskInterface.register(NAME, sdpa_mask)  # the same boolean masks as transformers' SDPA


@contextlib.contextmanager
def grouped_attention(model: Any) -> Iterator[bool]:
    """Within the block, a CPU model that runs transformers' SDPA attention runs `grouped_sdpa` instead; yields
    whether it does. On a GPU the fused kernels stay (stacking under a mask would leave them); a model made of
    sub-models (a config with sub-configs) is left as it is."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    device = next(base.parameters()).device
    if (config is None or device.type != "cpu" or getattr(config, "_attn_implementation", None) != "sdpa"
            or getattr(config, "sub_configs", None)):  # the setting spreads to sub-models, which may differ
        yield False
        return
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = "sdpa"
