"""Greedy decoding with continuous batching and drafts (the `fast` protocol): `generate_stream`.

A finished question's slot goes at once to the next one (its own prefill, positions and cache row in
`kvcache.SlotCache`), and a step may verify tokens each question drafts from its own text (prompt-lookup
decoding, `_Row.draft`). In fp32 on the CPU each question gets exactly the tokens `generate` gives it alone
(tested; elsewhere see `decoding.batch_invariant`). Generation runs
a CPU model's Linear layers through oneDNN with packed weights (`packed.packed_linears`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Iterator

import torch

from llm_adapters.data.tasks import Task
from llm_adapters.data.templates import adds_special_tokens
from llm_adapters.errors import UserError
from llm_adapters.eval.decoding import (DecodeConfig, Generation, end_of_text_ids, finish, plan_batches,
                                        text_decoder)
from llm_adapters.eval.extract import answer_complete
from llm_adapters.eval.forward import Header, forward_accepts, is_prompt_learning, model_forward
from llm_adapters.eval.hf_generate import stream_in_batches
from llm_adapters.eval.kvcache import SlotCache
from llm_adapters.eval.packed import packed_linears

_NGRAM = 3  # the longest tail n-gram looked up for a draft
# A decoding step's fixed cost, in tokens of work: a step pays for its columns only when the drafts' expected tokens
# outweigh them. Fitted on the 2-core CPU over the steps of 64 GSM8K questions (SmolLM2, Linear layers packed,
# 2-438 tokens a step): 73 ms a step plus 3.0 ms a token, so some 24 tokens that every step pays whatever its width.
# Refitted after the stacked attention (eval/attention.py): 51 ms + 3.1 ms a token, 16 tokens; 16 ran no faster
# than 24 (97.2 against 95.4 s over two rounds, docs/benchmarks.md), so 24 stays.
_STEP_COST = 24
_MEMORY = 8  # tokens over which a row's draft hit rate is averaged (exponentially)
# A prefill forward's fixed cost, in prompt tokens of work: 50 ms a forward against 1.6 ms a prompt token (the cost
# model fitted on the 2-core CPU with SmolLM2, docs/benchmarks.md).
_PREFILL_COST = 32


class _Row:
    """A prompt in a slot: its tokens so far, the text length already found incomplete, and its draft index.

    The draft index maps each n-gram of the row's text (prompt and generated tokens, n <= `_NGRAM`) to the
    position after its latest occurrence that has a token after it: small models copy from the question and
    repeat themselves, so what followed the current tail last time is a good guess of what follows now
    (prompt-lookup decoding). Their loops are often numbered lists ("12. The sisters have ...\n13. The sisters
    have ..."), so a copied number that grew by d since the list's previous item is drafted grown by d again. Written
    by hand: transformers' prompt-lookup generator works on one sequence inside `generate`, not on the rows of a
    batch that come and go, and copies numbers as they were.

    Args:
        index: the prompt's index.
        prompt: its token ids.
        digits: the tokenizer's single-digit tokens (id -> digit, `digit_tokens`); empty: numbers are copied.
    """

    def __init__(self, index: int, prompt: list[int] | tuple[int, ...], digits: dict[int, int] | None = None) -> None:
        self.index, self.prompt_length = index, len(prompt)
        self.digits = digits or {}
        self.digit_ids = {digit: token for token, digit in self.digits.items()}
        self.tokens: list[int] = []
        self.checked = 0
        self.text = list(prompt)
        self.follow: dict[tuple[int, ...], int] = {}
        for end in range(1, len(prompt)):
            self._index(end)
        self.guess = self.draft(1)  # the draft's first token, scored against the token that comes
        self.rate = 0.5  # how often the first draft token was right, recent tokens weighing most

    def _index(self, end: int) -> None:
        """The n-grams ending just before `end` are followed by the token at `end`."""
        for n in range(1, min(_NGRAM, end) + 1):
            self.follow[tuple(self.text[end - n:end])] = end

    def append(self, token: int) -> None:
        self.rate += ((self.guess == [token]) - self.rate) / _MEMORY
        self.tokens.append(token)
        self.text.append(token)
        self._index(len(self.text) - 1)
        self.guess = self.draft(1)

    def draft(self, limit: int) -> list[int]:
        """Up to `limit` tokens that followed the latest earlier occurrence of the longest tail n-gram, copied on
        past the text's end with the period that occurrence implies (a loop continues as it went), its numbers
        counting on as they did (`_counted`)."""
        text = self.text
        for n in range(min(_NGRAM, len(text)), 0, -1):
            source = self.follow.get(tuple(text[-n:]))
            if source is not None:
                out = list(text)
                while len(out) < len(text) + limit:
                    counted = self._counted(out, source)
                    if counted:
                        out.extend(counted[0])
                        source = counted[1]
                    else:
                        out.append(out[source])
                        source += 1
                return out[len(text):len(text) + limit]
        return []

    def _counted(self, out: list[int], source: int) -> tuple[list[int], int] | None:
        """Where `out[source]` is a digit of a number (a run of digit tokens, complete in `out`) and the latest
        number before it between the same two tokens (the previous item of a numbered list) differs by d, the
        digits of the number plus d that `out` does not end with yet, and the position after the copied number;
        else None."""
        digits = self.digits
        if out[source] not in digits:
            return None
        first, last = source, source
        while first > 0 and out[first - 1] in digits:
            first -= 1
        while last < len(out) and out[last] in digits:
            last += 1
        if first == 0 or last == len(out):
            return None
        for end in range(first - 2, 1, -1):  # the earlier number ends just before `end`
            if out[end] != out[last] or out[end - 1] not in digits:
                continue
            start = end - 1
            while start > 0 and out[start - 1] in digits:
                start -= 1
            if start > 0 and out[start - 1] == out[first - 1]:
                break
        else:
            return None
        number = int("".join(str(digits[t]) for t in out[first:last]))
        step = number - int("".join(str(digits[t]) for t in out[start:end]))
        written = out[len(out) - (source - first):]  # the digits of the new number already there
        counted = str(number + step)
        if (not step or number + step < 0 or len(counted) <= len(written)
                or any(t not in digits for t in written)
                or counted[:len(written)] != "".join(str(digits[t]) for t in written)):
            return None
        return [self.digit_ids[int(c)] for c in counted[len(written):]], last


def digit_tokens(tokenizer: Any) -> dict[int, int]:
    """The tokenizer's tokens that are one decimal digit (id -> digit): the numbers a draft can count on."""
    digits = {}
    for digit in range(10):
        token = tokenizer.convert_tokens_to_ids(str(digit))
        if isinstance(token, int) and tokenizer.decode([token]) == str(digit):
            digits[token] = digit
    return digits


def _step_width(drafts: list[tuple[list[int], float]], slots: int) -> int:
    """Columns per row for the next step (1 + draft tokens verified): the width with the most expected tokens
    per unit of work, each row's draft of length n and acceptance p adding p + p^2 + ... + p^n tokens."""
    longest = max((len(draft) for draft, _ in drafts), default=0)
    best, best_value = 1, 0.0
    for width in range(1, longest + 2):
        expected = sum(1 + sum(p ** i for i in range(1, min(len(draft), width - 1) + 1)) for draft, p in drafts)
        value = expected / (_STEP_COST + slots * width)
        if value > best_value:
            best, best_value = width, value
    return best


def _prefill_size(lengths: list[int]) -> int:
    """How many of the next prompts (their `lengths`, longest first) to prefill together: the first group of
    the split of all of them into consecutive groups that costs the least work, a group costing a forward's
    fixed cost plus its rows padded to its first (longest) prompt. An outlier in length goes alone rather than
    pad its neighbours; prompts of one length go together."""
    best = [0] + [float("inf")] * len(lengths)  # best[j]: the least work for the last j prompts
    first = [0] * (len(lengths) + 1)
    for j in range(1, len(lengths) + 1):
        start = len(lengths) - j
        for size in range(1, j + 1):
            work = _PREFILL_COST + size * lengths[start] + best[j - size]
            if work < best[j]:
                best[j], first[j] = work, size
    return first[len(lengths)]


def _greedy_stream(model: Any, tokenizer: Any, ids: list[list[int]], order: list[int], task: Task,
                   config: DecodeConfig) -> Iterator[tuple[int, Generation]]:
    """Greedy decoding with continuous batching; yields (prompt index, generation) as each prompt finishes.

    `generate` keeps computing a batch's finished rows until its last row ends, and a batch that only drops them
    runs its long tail with a few rows, where a step costs nearly what a full one does (the weights are read
    for every step). Here `config.batch_size` slots decode together and a finished prompt's slot is taken by the
    next prompt at once: its own prefill (with the other newcomers of that step), its own positions, its own
    cache row (`kvcache.SlotCache`, which also writes each new token in place). Prompts come longest first, so a
    newcomer fits in front of the cache's last column. Positions count from each prompt's first real token, as
    `generate` does, so every prompt gets the tokens `generate` gives it alone (tested).

    A step may verify drafts (`config.draft_tokens`): each row feeds its last token and up to that many tokens
    guessed from its own text (`_Row.draft`), all rows the same number of columns (`_step_width` picks it from
    the rows' recent hit rates and a step's fixed cost). The model's greedy choice at each column checks the
    next draft token: a row keeps its drafts up to the first wrong one, plus the model's own token there, and the
    cache masks out the columns it did not keep (`SlotCache.keep`). The tokens are those of one token a step;
    loops and copied phrases take fewer steps.

    Falls back to `model.generate` in batches for models whose cache has other than plain full-attention layers.
    """
    device = next(model.parameters()).device
    ends = end_of_text_ids(model, tokenizer)
    budget = config.max_new_tokens or task.max_new_tokens
    use_positions = forward_accepts(model, "position_ids")
    digits = digit_tokens(tokenizer)
    last_only = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}
    decode = text_decoder(tokenizer)
    queue = list(reversed(order))  # pop() takes the longest left
    slots: list[_Row | None] = []
    cache: SlotCache | None = None

    def finished(row: _Row, token: int) -> bool:
        row.append(token)
        if token in ends or len(row.tokens) >= budget:
            return True
        if config.stop_rules:
            text = decode(row.tokens)
            if answer_complete(task, text, row.checked):
                return True
            row.checked = len(text)
        return False

    header = Header(model, ids)

    def prefill(indices: list[int]) -> tuple[Any, torch.Tensor, torch.Tensor]:
        output, mask, _ = header.prefill(model, [ids[i] for i in indices], tokenizer.pad_token_id, **last_only)
        return output.cache, mask, output.logits[:, -1].argmax(-1)

    while True:
        # Fill the free slots (all of them at the start) from the queue, in the groups of neighbours in length
        # that cost the least work (`_prefill_size`); a newcomer done at its first token frees its slot again.
        free = [k for k, row in enumerate(slots) if row is None] + list(range(len(slots), config.batch_size))
        while free and queue:
            size = _prefill_size([len(ids[i]) for i in reversed(queue[-len(free):])])  # the next len(free)
            take = [queue.pop() for _ in range(size)]
            prefilled, mask, chosen = prefill(take)
            if cache is None:
                if not SlotCache.supports(prefilled):
                    yield from stream_in_batches(model, tokenizer, ids, order, task, config)
                    return
                cache = SlotCache(len(prefilled.layers), min(config.batch_size, len(order)))
                slots = [None] * cache.rows
                free = list(range(cache.rows))
            rows, place = free[:len(take)], []
            for k, (row, index, token) in enumerate(zip(rows, take, chosen.tolist())):
                entry = _Row(index, ids[index], digits)
                if finished(entry, token):
                    yield index, finish(tokenizer, entry.tokens, len(entry.tokens), ends)
                else:
                    slots[row] = entry
                    place.append(k)
            if place and len(place) < len(take):
                keep = torch.tensor(place, device=device)
                prefilled.batch_select_indices(keep)
                mask = mask[keep]
            if place:
                cache.admit([rows[k] for k in place], prefilled, mask)
            free = [k for k, row in enumerate(slots) if row is None]
        live = [k for k, row in enumerate(slots) if row is not None]
        if not live:
            return
        # The tail: stop computing idle slots at once (`select` moves the few rows past the live count, a few
        # milliseconds against a step's 100 or more).
        if not queue and len(live) < len(slots):
            slots = [slots[k] for k in cache.select(live)]
            live = list(range(len(slots)))
        cache.compact(live)
        # Each row feeds its last token and, when drafts pay, the tokens it drafts; the logits at column j are
        # the model's choice after the first j of them, so a draft is kept up to its first wrong token and the
        # model's own token there comes free (one forward pass, the tokens of one-at-a-time greedy decoding).
        drafts = {k: slots[k].draft(min(config.draft_tokens, budget - len(slots[k].tokens) - 1)) for k in live}
        width = _step_width([(drafts[k], slots[k].rate) for k in live], len(slots))
        step_ids = torch.full((len(slots), width), tokenizer.pad_token_id, dtype=torch.long)
        positions = torch.zeros((len(slots), width), dtype=torch.long)
        for k in live:
            drafts[k] = drafts[k][:width - 1]
            fed = [slots[k].tokens[-1]] + drafts[k]
            step_ids[k, :len(fed)] = torch.tensor(fed)
            positions[k] = slots[k].prompt_length + len(slots[k].tokens) - 1 + torch.arange(width)
        extra = {"position_ids": positions.to(device)} if use_positions else {}
        output = model_forward(model, input_ids=step_ids.to(device), attention_mask=cache.step_mask(width), cache=cache,
                          use_cache=True, **extra)
        counts = [0] * len(slots)  # columns each row keeps: its fed token and the drafts it accepted
        for k, chosen in zip(live, output.logits.argmax(-1)[live].tolist()):  # argmax first: no logits copied
            row, draft = slots[k], drafts[k]
            accepted = next((j for j, token in enumerate(draft) if token != chosen[j]), len(draft))
            counts[k] = 1 + accepted
            for token in chosen[:accepted + 1]:
                if finished(row, token):
                    yield row.index, finish(tokenizer, row.tokens, len(row.tokens), ends)
                    slots[k] = None
                    break
        if width > 1:
            cache.keep(counts, width)



def check_tokenizer(tokenizer: Any) -> None:
    if tokenizer.padding_side != "left" or tokenizer.pad_token_id is None:
        raise UserError("the tokenizer must pad on the left and have a pad token (models.prepare_tokenizer)")


@torch.no_grad()
def generate_stream(model: Any, tokenizer: Any, prompts: list[str], task: Task, config: DecodeConfig,
                    template: str = "original") -> Iterator[tuple[int, Generation]]:
    """Generate the responses to `prompts`, yielding (index in `prompts`, generation) as each one finishes.

    Greedy decoding with the KV cache runs our continuous-batching loop (`_greedy_stream`): `config.batch_size`
    prompts decode together and a finished prompt's place goes to the next one. Beam search, decoding without
    the cache and prompt-learning adapters (whose virtual tokens PEFT inserts inside `generate`) go through
    `model.generate`, one batch of length-sorted prompts at a time. Both give the tokens that `model.generate`
    gives for each prompt alone (tested).

    Args:
        model: a causal LM or a PeftModel, in eval mode (set here too: dropout off).
        tokenizer: pads on the left and has a pad token (`models.prepare_tokenizer`).
        prompts: the full prompts.
        task: gives the generation budget and the stop rule.
        config: decoding settings.
        template: the prompts' template (a chat template's prompts carry their own special tokens).

    Raises:
        UserError: a tokenizer that pads on the right or has no pad token.
    """
    check_tokenizer(tokenizer)
    model.eval()
    if not prompts:
        return
    ids = tokenizer(prompts, add_special_tokens=adds_special_tokens(template))["input_ids"]
    order = [i for batch in plan_batches([len(x) for x in ids], len(ids)) for i in batch]  # longest first
    with packed_linears(model):
        if config.num_beams == 1 and config.use_cache and not is_prompt_learning(model):
            yield from _greedy_stream(model, tokenizer, ids, order, task, config)
        else:
            yield from stream_in_batches(model, tokenizer, ids, order, task, config)


def generate_batch(model: Any, tokenizer: Any, prompts: list[str], task: Task, config: DecodeConfig,
                   template: str = "original") -> list[Generation]:
    """The responses to `prompts`, in their order (`generate_stream` with all of them decoding together)."""
    config = replace(config, batch_size=max(1, len(prompts)))
    results = dict(generate_stream(model, tokenizer, prompts, task, config, template))
    return [results[i] for i in range(len(prompts))]


