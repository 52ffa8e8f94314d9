"""Training batches: records -> token ids with masked labels -> micro-batches (length-grouped, packed or padded).

Label masking. The prompt and the response are tokenised apart and their ids concatenated
(`templates.encode_pair`, which log-likelihood scoring uses too), so the boundary is exact. EOS follows the
response. Labels are -100 on the prompt unless `train_on_inputs`.

Truncation at `cutoff_len` keeps the first tokens. A truncated example has no EOS, as in the original: its
response goes on past the cut, so teaching the model to stop there would be wrong. Truncated examples are
counted; an example whose response is cut off entirely has nothing to learn and is dropped (and counted), so
no micro-batch can be left without a label token (no NaN losses).
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import Sampler
from transformers import DataCollatorWithFlattening

from llm_adapters.data.templates import build_training_text, encode_pair
from llm_adapters.errors import UserError

IGNORE = -100  # label of a token that gets no loss (PyTorch's cross-entropy default ignore_index)
# Architectures whose attention keeps packed examples apart when given restarting position_ids and no attention
# mask (transformers' masking_utils detects the resets). BLOOM (ALiBi from the mask) and OPT do not; the packing
# test checks this table against every tiny model.
PACKING_MODEL_TYPES = ("llama", "mistral", "qwen2", "gptj", "gpt_neox", "gpt2")
# Architectures on which a shared prompt prefix can be run once and its keys/values reused by every row (a
# transformers Cache, explicit position ids after it); the test checks this table against every tiny model.
PREFIX_SHARING_MODEL_TYPES = ("llama", "mistral", "qwen2", "gptj", "gpt_neox", "bloom", "opt", "gpt2")
MIN_SHARED_PREFIX = 4  # tokens; below this, a second forward pass costs more than it saves


@dataclass
class EncodeStats:
    """What tokenisation did to the records: the numbers the manifest reports."""

    records: int = 0
    examples: int = 0  # kept for training
    truncated: int = 0  # longer than cutoff_len: cut, no EOS, still trained on
    dropped_response_cut: int = 0  # response entirely past cutoff_len: no label token left, not trained on
    tokens: int = 0  # real (non-padding) tokens of the kept examples
    label_tokens: int = 0  # tokens that carry loss
    longest: int = 0
    dropped_indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["dropped_indices"] = data["dropped_indices"][:20]  # the first few, to look them up
        return data


def split_records(records: Sequence[dict], val_set_size: int, seed: int, max_examples: int | None = None
                  ) -> tuple[list[dict], list[dict]]:
    """(train, validation): a seeded shuffle, the first `val_set_size` for validation, then at most `max_examples`.

    Raises:
        ValueError: the validation set would leave no training record.
    """
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if val_set_size >= len(records):
        raise UserError(f"val_set_size {val_set_size} leaves no training record (the data has {len(records)})")
    val = [records[i] for i in order[:val_set_size]]
    train = [records[i] for i in order[val_set_size:]]
    return train[:max_examples] if max_examples else train, val


def encode_example(record: dict, tokenizer: Any, *, template: str, cutoff_len: int, train_on_inputs: bool
                   ) -> tuple[list[int], list[int], int, bool]:
    """(input_ids, labels, prompt_len, truncated) for one record; labels are -100 on the prompt unless
    train_on_inputs. The response (with EOS) starts at `prompt_len`; if that is >= cutoff_len, none of it is left."""
    prompt, response = build_training_text(record["instruction"], record.get("input", ""), record["output"],
                                           template=template, tokenizer=tokenizer)
    prompt_ids, response_ids = encode_pair(tokenizer, prompt, response, template)
    response_ids = response_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + response_ids
    labels = (list(prompt_ids) if train_on_inputs else [IGNORE] * len(prompt_ids)) + response_ids
    truncated = len(input_ids) > cutoff_len
    return input_ids[:cutoff_len], labels[:cutoff_len], len(prompt_ids), truncated


def encode_records(records: Sequence[dict], tokenizer: Any, *, template: str, cutoff_len: int,
                   train_on_inputs: bool) -> tuple[list[dict[str, list[int]]], EncodeStats]:
    """Tokenise and mask every record; drop (and count) those whose response was cut off entirely."""
    stats, examples = EncodeStats(records=len(records)), []
    for index, record in enumerate(records):
        input_ids, labels, prompt_len, truncated = encode_example(
            record, tokenizer, template=template, cutoff_len=cutoff_len, train_on_inputs=train_on_inputs)
        stats.truncated += truncated
        if prompt_len >= cutoff_len:
            stats.dropped_response_cut += 1
            stats.dropped_indices.append(index)
            continue
        examples.append({"input_ids": input_ids, "labels": labels})
        stats.tokens += len(input_ids)
        # Position 0 is never a target (nothing before it predicts it).
        stats.label_tokens += sum(1 for label in labels[1:] if label != IGNORE)
        stats.longest = max(stats.longest, len(input_ids))
    stats.examples = len(examples)
    return examples, stats


def _shifted(labels: list[int]) -> list[int]:
    """Targets per position: position i predicts token i+1; the last position of an example predicts nothing."""
    return labels[1:] + [IGNORE]


class PaddedCollator:
    """Right-pads a micro-batch to its longest example: input_ids, attention_mask, labels, shift_labels.

    Right padding keeps every example's positions at 0..n-1 without computing position ids. With `share_prefix`,
    `prefix_len` is the number of leading tokens that every row shares (the template's header, ~24 tokens on
    LLM-Adapters data), leaving each row at least one token of its own; 0 when not worth a second pass.
    """

    def __init__(self, pad_token_id: int, share_prefix: bool = False):
        self.pad_token_id, self.share_prefix = pad_token_id, share_prefix

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), width), dtype=torch.long),
            "labels": torch.full((len(features), width), IGNORE, dtype=torch.long),
            "shift_labels": torch.full((len(features), width), IGNORE, dtype=torch.long),
        }
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = torch.tensor(f["input_ids"])
            batch["attention_mask"][row, :n] = 1
            batch["labels"][row, :n] = torch.tensor(f["labels"])
            batch["shift_labels"][row, :n] = torch.tensor(_shifted(f["labels"]))
        if self.share_prefix:
            batch["prefix_len"] = shared_prefix_length([f["input_ids"] for f in features])
        return batch


def shared_prefix_length(rows: list[list[int]]) -> int:
    """Leading tokens common to every row, at most the shortest row's length - 1; 0 if one row or too short."""
    if len(rows) < 2:
        return 0
    limit, first = min(len(r) for r in rows) - 1, rows[0]
    length = 0
    while length < limit and all(r[length] == first[length] for r in rows):
        length += 1
    return length if length >= MIN_SHARED_PREFIX else 0


class PackedCollator:
    """A micro-batch as one padding-free row of shape [1, sum of lengths] (transformers' DataCollatorWithFlattening).

    position_ids restart at 0 for each example and there is no attention mask: transformers then builds a
    block-diagonal causal mask, so attention stays inside each example (PACKING_MODEL_TYPES); with
    `flash_attention` the collator also gives the sequence boundaries flash-attention's varlen kernels take. The
    first label of each example is -100, so shift_labels end every example with -100: no example is trained to
    predict the next one's first token.
    """

    def __init__(self, flash_attention: bool = False):
        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_attention)

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = self.flatten(features, return_tensors="pt")
        labels = batch["labels"]  # [1, total]
        batch["shift_labels"] = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], IGNORE)], dim=1)
        return batch


class SeededSampler(Sampler[int]):
    """Deterministic training order in global batches (the examples of one optimiser step), drawn from (seed,
    epoch) alone, so that a resumed run replays it and the run is the same whatever the micro-batch size and the
    number of processes (they only split each global batch differently).

    An epoch is a permutation of the examples cut into global batches of `batch_size`. With `group_by_length`,
    chunks of `50 x batch_size` shuffled examples are sorted by length before the cut (a global batch holds
    similar lengths) and the global batches are shuffled again; the longest goes first, so a memory peak shows at
    step 1. Within a global batch the examples come longest first, so its micro-batches (consecutive slices) are
    length-grouped too. With at least one whole global batch, the `len % batch_size` examples left over are not
    used in that epoch (another permutation leaves out others in the next): a short last step would be split
    differently by other micro-batch sizes. With fewer examples than `batch_size`, they are the one batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths, self.batch, self.seed, self.group = list(lengths), batch_size, seed, group_by_length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n if n < self.batch else n - n % self.batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()[:len(self)]
        if self.group:  # chunks of whole global batches, each sorted by length, then cut
            chunk = 50 * self.batch
            order = [i for start in range(0, len(order), chunk)
                     for i in sorted(order[start:start + chunk], key=lambda i: -self.lengths[i])]
        batches = [order[k:k + self.batch] for k in range(0, len(order), self.batch)]
        if self.group:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            longest = max(range(len(batches)), key=lambda i: max(self.lengths[j] for j in batches[i]))
            batches[0], batches[longest] = batches[longest], batches[0]
        if not self.group:  # random micro-batches (the original's), still cut from the same global batches
            return iter([i for batch in batches for i in batch])
        return iter([i for batch in batches for i in sorted(batch, key=lambda i: (-self.lengths[i], i))])
