"""The slot cache of continuous batching: a fixed set of batch rows whose keys/values live in preallocated buffers.

Written by hand because transformers' caches do not do what continuous batching needs: `DynamicCache` appends
each new token by concatenation, which copies the whole cache at every decoding step (two thirds of a step's time
on a CPU, measured in docs/benchmarks.md), and neither it nor `StaticCache` lets one row be replaced by another
prompt while the others keep decoding.

Layout: every row's tokens end in the same column (`length` - 1), as with left padding; a row's real tokens are
the columns where `mask` is 1 and the rest is masked out. A new prompt takes a row by writing its prefilled
keys/values into that row's last columns; each decoding step writes the same number of columns for all rows, in
place (one, or the fed token and its drafts when drafts are verified), and `keep` masks out each row's rejected
drafts. `compact` moves each row's real columns to the end and drops the columns no row uses (what is left of
finished prompts and of rejected drafts).
"""
from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

_GROW = 64  # columns added when a buffer is full (one copy per 64 decoding steps)


class SlotLayer(DynamicLayer):
    """One attention layer's keys/values: buffers of (rows, heads, capacity, head_dim), `length` columns in use."""

    def __init__(self) -> None:
        super().__init__()
        self.length = 0
        self.key_buffer: torch.Tensor | None = None
        self.value_buffer: torch.Tensor | None = None

    def allocate(self, rows: int, like: torch.Tensor, capacity: int) -> None:
        # zeros, not empty: a masked column still enters attention with weight 0, and 0 * NaN garbage is NaN
        shape = (rows, like.shape[1], capacity, like.shape[3])
        self.key_buffer = like.new_zeros(shape)
        self.value_buffer = like.new_zeros(shape)
        self.device, self.is_initialized = like.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, :self.length]
        self.values = self.value_buffer[:, :, :self.length]

    def reserve(self, columns: int) -> None:
        """Room for `columns` columns (copies the buffers when they are full)."""
        capacity = self.key_buffer.shape[2]
        if columns <= capacity:
            return
        extra = max(columns - capacity, _GROW)
        pad = (0, 0, 0, extra)
        self.key_buffer = torch.nn.functional.pad(self.key_buffer, pad)
        self.value_buffer = torch.nn.functional.pad(self.value_buffer, pad)
        self._views()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        self.reserve(self.length + n)
        self.key_buffer[:, :, self.length:self.length + n] = key_states
        self.value_buffer[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


class SlotCache(Cache):
    """Keys/values and attention mask of `rows` batch rows that prompts take in turn.

    Args:
        layers: the number of attention layers.
        rows: the batch rows (slots).
    """

    def __init__(self, layers: int, rows: int) -> None:
        super().__init__(layers=[SlotLayer() for _ in range(layers)])
        self.rows = rows
        self.mask: torch.Tensor | None = None  # (rows, capacity) long, 1 on each row's real tokens

    @property
    def length(self) -> int:
        return self.layers[0].length

    @staticmethod
    def supports(cache: Any) -> bool:
        """Whether a model's own prefill cache has only plain full-attention layers (no sliding window, no
        recurrent or shared-KV layers), the only kind a SlotCache stands in for."""
        return isinstance(cache, DynamicCache) and all(type(layer) is DynamicLayer for layer in cache.layers)

    def admit(self, rows: list[int], prefill: DynamicCache, mask: torch.Tensor) -> None:
        """Put prompts prefilled together (left-padded, `mask` (len(rows), width)) into `rows`, their last token
        in the cache's last column; columns in front are masked for them."""
        width = mask.shape[1]
        if self.mask is None:  # the first prompts fix the shapes
            self.mask = mask.new_zeros((self.rows, width + _GROW))
            for layer, source in zip(self.layers, prefill.layers):
                layer.allocate(self.rows, source.keys, width + _GROW)
                layer.length = width
                layer._views()
        elif width > self.length:  # a prompt longer than the cache so far: every row moves right
            self._shift(width - self.length)
        length = self.length
        index = torch.tensor(rows, device=mask.device)
        for layer, source in zip(self.layers, prefill.layers):
            layer.key_buffer[index, :, length - width:length] = source.keys
            layer.value_buffer[index, :, length - width:length] = source.values
        self.mask[index, :length] = 0
        self.mask[index, length - width:length] = mask

    def step_mask(self, width: int = 1) -> torch.Tensor:
        """The attention mask for `width` more tokens in every row (the columns the next step writes)."""
        length = self.length
        for layer in self.layers:
            layer.reserve(length + width)
        if self.mask.shape[1] < length + width:
            self.mask = torch.nn.functional.pad(self.mask, (0, max(width, _GROW)))
        self.mask[:, length:length + width] = 1
        return self.mask[:, :length + width]

    def keep(self, counts: list[int], width: int) -> None:
        """After a step of `width` columns: row k keeps the first `counts[k]` of them (its fed token and the
        drafts it accepted); the rest (rejected drafts, filler) are masked out for the steps to come."""
        columns = torch.arange(width, device=self.mask.device)
        reject = columns[None, :] >= torch.tensor(counts, device=self.mask.device)[:, None]
        self.mask[:, self.length - width:self.length][reject] = 0

    def select(self, rows: list[int]) -> list[int]:
        """Keep only `rows` (n of them): the kept rows past the first n move into the first n rows' idle places
        (one copy of the moved rows alone), and the buffers become views of their first n rows (the rest of the
        storage is freed when a buffer next grows). Returns which of the old rows each new row holds."""
        n, kept = len(rows), set(rows)
        held = [k if k in kept else -1 for k in range(n)]
        moved = [k for k in rows if k >= n]
        into = [k for k in range(n) if held[k] < 0]
        for target, source in zip(into, moved):
            held[target] = source
        if moved:
            target, source = (torch.tensor(x, device=self.mask.device) for x in (into, moved))
            for layer in self.layers:
                layer.key_buffer[target] = layer.key_buffer[source]
                layer.value_buffer[target] = layer.value_buffer[source]
            self.mask[target] = self.mask[source]
        for layer in self.layers:
            layer.key_buffer, layer.value_buffer = layer.key_buffer[:n], layer.value_buffer[:n]
            layer._views()
        self.mask = self.mask[:n]
        self.rows = n
        return held

    def compact(self, live: list[int]) -> None:
        """Move each row's real columns to the end, in order, dropping the columns that no row in `live` uses,
        once there are `_GROW` of them (what finished prompts and rejected drafts leave behind)."""
        length = self.length
        mask = self.mask[:, :length]
        keep = int(mask[live].sum(1).max())
        if length - keep < _GROW:
            return
        # a stable sort puts each row's masked columns first and its real ones last, each in column order
        index = torch.sort(mask, dim=1, stable=True).indices[:, length - keep:]
        rows, heads, _, dim = self.layers[0].key_buffer.shape
        gather = index[:, None, :, None].expand(rows, heads, keep, dim)
        for layer in self.layers:
            for name in ("key_buffer", "value_buffer"):
                buffer = getattr(layer, name)
                buffer[:, :, :keep] = buffer[:, :, :length].gather(2, gather)
            layer.length = keep
            layer._views()
        self.mask[:, :keep] = mask.gather(1, index)

    def _shift(self, columns: int) -> None:
        """Move every row `columns` to the right (masked zeros in front)."""
        for layer in self.layers:
            pad = (0, 0, columns, 0)
            layer.key_buffer = torch.nn.functional.pad(layer.key_buffer, pad)
            layer.value_buffer = torch.nn.functional.pad(layer.value_buffer, pad)
            layer.length += columns
            layer._views()
        self.mask = torch.nn.functional.pad(self.mask, (columns, 0))
