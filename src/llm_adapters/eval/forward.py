"""How the engine runs a model forward: left-padded rows with their mask and positions, the leading tokens all
prompts share (the template's preamble) run once (`Header`), and on the CPU grouped-query attention that reads
each key/value head once (`attention.grouped_attention`)."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from llm_adapters.eval.attention import grouped_attention
from llm_adapters.eval.kvcache import SlotCache

def forward_accepts(model: Any, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def is_prompt_learning(model: Any) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))



def left_pad(rows: list[list[int]] | list[tuple[int, ...]], pad_id: int, device: Any
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to one width, and the mask (1 on real tokens)."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        input_ids[k, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[k, width - len(row):] = 1
    return input_ids.to(device), mask.to(device)


def model_forward(model: Any, **inputs: Any) -> Any:
    """`model(**inputs)`, on the CPU with grouped-query attention reading each key/value head once
    (`attention.grouped_attention`)."""
    with grouped_attention(model):
        return model(**inputs)


_MIN_HEADER = 8  # shared leading tokens worth a pass of their own


class Header:
    """The leading tokens every prompt of a run shares (the template's preamble), run once: each prefill then
    runs only the rest of its prompts, after the header's keys/values, at positions counted on from it.

    Only for models that take explicit positions and have plain full-attention caches; otherwise `length` is 0
    and prompts run whole.
    """

    def __init__(self, model: Any, prompts: list[list[int]] | list[tuple[int, ...]]) -> None:
        self.length, self.cache = 0, None
        shortest = min(len(p) for p in prompts)
        length = 0
        while length < shortest - 1 and all(p[length] == prompts[0][length] for p in prompts):
            length += 1
        if length < _MIN_HEADER or not forward_accepts(model, "position_ids"):
            return
        device = next(model.parameters()).device
        cache = model(input_ids=torch.tensor([list(prompts[0][:length])], device=device), use_cache=True).cache
        if SlotCache.supports(cache):
            self.length, self.cache = length, cache

    def prefill(self, model: Any, rows: list[list[int]] | list[tuple[int, ...]], pad_id: int, **kwargs: Any
                ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Run `rows` (left-padded, each after the header when there is one): (output, mask over the whole
        rows, positions of the tokens run)."""
        device = next(model.parameters()).device
        input_ids, mask = left_pad([row[self.length:] for row in rows], pad_id, device)
        positions = self.length + (mask.cumsum(-1) - 1).clamp(min=0)
        if not self.length:
            extra = {"position_ids": positions} if forward_accepts(model, "position_ids") else {}
            return (model_forward(model, input_ids=input_ids, attention_mask=mask, use_cache=True, **extra, **kwargs), mask,
                    positions)
        cache = DynamicCache()
        for index, layer in enumerate(self.cache.layers):  # expanded views: the forward's concatenation copies
            cache.update(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1), index)
        mask = torch.cat([mask.new_ones((len(rows), self.length)), mask], dim=1)
        output = model_forward(model, input_ids=input_ids, attention_mask=mask, cache=cache, position_ids=positions,
                          use_cache=True, **kwargs)
        return output, mask, positions


