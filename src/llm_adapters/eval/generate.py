"""The generation engine: batches sorted by length, left padding with an attention mask, KV cache, stop rules.

Why each piece:
- Left padding: a decoder-only model continues from the last position, so every row's prompt must end in the
  same column; the pads go in front. The attention mask tells the model to ignore them (the original passed
  none, so its outputs changed with the batch size, issues #61/#64), and `generate` derives mask-aware
  positions from it.
- Sorting by prompt length: rows of similar length waste little compute on pads.
- Stop rules (`fast` protocol): a row stops at EOS, or as soon as its answer can no longer change
  (`extract.answer_complete`); finished rows only receive pad tokens, and the batch ends when all rows are done.
- `original` protocol: the original's decoding (4-beam search, 256/32 new tokens, no stop rule), with the
  attention mask and eval mode that the original lacked. `use_cache=False` (the original math script's
  setting) changes only the speed, so the KV cache stays on unless asked otherwise.

`continuation_logliks` scores fixed continuations instead (lm-eval's loglikelihood), for `--scoring loglik`.
Generation runs a CPU model's Linear layers through oneDNN with packed weights (`packed.packed_linears`); every
engine forward runs grouped-query attention with each group's query heads stacked (`attention.grouped_attention`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Literal

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import DynamicCache
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from llm_adapters.data.tasks import Task
from llm_adapters.data.templates import adds_special_tokens, encode_pair
from llm_adapters.errors import UserError
from llm_adapters.eval.attention import grouped_attention
from llm_adapters.eval.extract import answer_complete
from llm_adapters.eval.kvcache import SlotCache
from llm_adapters.eval.packed import packed_linears, plain_linears

Protocol = Literal["fast", "original"]
PROTOCOLS: tuple[str, ...] = ("fast", "original")
SPEED_ONLY = ("batch_size", "draft_tokens")  # decoding settings that change the speed, never the tokens
DRAFT_TOKENS = 8  # the default most tokens a row drafts for one step


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode.

    Args:
        protocol: "fast" (greedy, stop rules) or "original" (4-beam search, no stop rule).
        batch_size: prompts decoding together (greedy: the slots of continuous batching; otherwise the prompts
            of one `generate` call).
        max_new_tokens: generation budget; None takes the task's (256 math, 32 commonsense).
        num_beams: 1 is greedy.
        use_cache: keep the KV cache (False reproduces the original math script's cost, not its results).
        stop_rules: stop a row once its answer is complete (greedy only).
        draft_tokens: the most tokens a row drafts from its own text for one step to verify (prompt-lookup
            decoding, greedy with the KV cache only); 0 decodes one token a step. The tokens are the same
            either way: only the number of steps changes.
    """

    protocol: Protocol = "fast"
    batch_size: int = 32
    max_new_tokens: int | None = None
    num_beams: int = 1
    use_cache: bool = True
    stop_rules: bool = True
    draft_tokens: int = DRAFT_TOKENS

    def __post_init__(self) -> None:
        problems = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            problems.append(f"num_beams must be >= 1, got {self.num_beams}")
        if self.draft_tokens < 0:
            problems.append(f"draft_tokens must be >= 0, got {self.draft_tokens}")
        if self.stop_rules and self.num_beams > 1:
            problems.append("stop rules need greedy decoding (num_beams=1)")
        if problems:
            raise UserError("; ".join(problems))

    @classmethod
    def for_protocol(cls, protocol: Protocol, batch_size: int | None = None, max_new_tokens: int | None = None,
                     rules: str = "default", draft_tokens: int = DRAFT_TOKENS) -> "DecodeConfig":
        """The protocol's settings; `batch_size` defaults to 32 (fast) or 1 (original, as its authors ran it).

        The stop rule ends a row once the `default` rules' answer is settled, which is exactly where those rules
        stop reading; the `original` rules read the whole generation (the last number, say), so with them the
        rows run to EOS or the budget, as the original's did.
        """
        if protocol == "original":
            return cls("original", 1 if batch_size is None else batch_size, max_new_tokens, num_beams=4,
                       stop_rules=False)
        return cls(protocol, 32 if batch_size is None else batch_size, max_new_tokens,
                   stop_rules=rules == "default", draft_tokens=draft_tokens)

    def settings(self, task: Task) -> dict[str, Any]:
        """The settings used for `task`, as written into summary.json."""
        return {"protocol": self.protocol, "batch_size": self.batch_size, "draft_tokens": self.draft_tokens,
                "num_beams": self.num_beams,
                "do_sample": False, "max_new_tokens": self.max_new_tokens or task.max_new_tokens,
                "use_cache": self.use_cache, "stop_rules": self.stop_rules, "attention_mask": True}


@dataclass(frozen=True)
class Generation:
    """One response: its text (new tokens only, special tokens removed) and how many tokens it took."""

    text: str
    n_tokens: int


class AnswerStop(StoppingCriteria):
    """Per-row stop rule: True for a row once the text generated after the prompt completes its answer.

    `generate` calls it after each new token, so at the first call the last column is the first new token: the
    new tokens are counted from there, whatever the sequence holds before them (the prompt-learning `generate`
    puts virtual-token placeholders in front of the padded prompt).

    Args:
        tokenizer: decodes the new tokens.
        task: whose answer type decides completeness.
    """

    def __init__(self, tokenizer: Any, task: Task) -> None:
        self.tokenizer, self.task = tokenizer, task
        self.start: int | None = None  # column of the first new token
        self.done: torch.Tensor | None = None
        self.stopped_at: dict[int, int] = {}  # row -> number of new tokens when its answer completed
        self.checked: dict[int, int] = {}  # row -> length of text already found loop-free

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            self.start = input_ids.shape[1] - 1
        new = input_ids[:, self.start:]
        rows = (~self.done).nonzero().flatten().tolist()
        texts = self.tokenizer.batch_decode(new[rows], skip_special_tokens=True)
        for row, text in zip(rows, texts):
            if answer_complete(self.task, text, self.checked.get(row, 0)):
                self.done[row] = True
                self.stopped_at[row] = new.shape[1]
            self.checked[row] = len(text)
        return self.done.clone()


def _end_of_text_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = ids if isinstance(ids, list) else [ids]
    return {i for i in ids + [tokenizer.eos_token_id] if i is not None}


def prompt_lengths(tokenizer: Any, prompts: list[str], template: str = "original") -> list[int]:
    """Token count of each prompt."""
    if not prompts:  # a finished task being resumed; tokenizers fail on an empty batch
        return []
    return [len(ids) for ids in tokenizer(prompts, add_special_tokens=adds_special_tokens(template))["input_ids"]]


def plan_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (a memory problem shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def _forward_accepts(model: Any, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(base.forward).parameters


def _is_prompt_learning(model: Any) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`ids -> tokenizer.decode(ids, skip_special_tokens=True)`; for transformers' Rust-backed tokenizers with no
    clean-up, their backend's decode itself (the same text): the stop rule decodes a row at every new token,
    and the wrapper's conversion of every id to a Python int first took two thirds of that time (SmolLM2)."""
    if (type(tokenizer)._decode is TokenizersBackend._decode and type(tokenizer).decode is TokenizersBackend.decode
            and not tokenizer.clean_up_tokenization_spaces):
        backend = tokenizer.backend_tokenizer
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def _finish(tokenizer: Any, tokens: list[int], length: int, ends: set[int]) -> Generation:
    """Cut a row at `length` or just after its first end-of-text token, whichever comes first, and decode it."""
    length = next((i + 1 for i, token in enumerate(tokens[:length]) if token in ends), length)
    return Generation(tokenizer.decode(tokens[:length], skip_special_tokens=True), length)


def _left_pad(rows: list[list[int]] | list[tuple[int, ...]], pad_id: int, device: Any
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids padded on the left to one width, and the mask (1 on real tokens)."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, row in enumerate(rows):
        input_ids[k, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[k, width - len(row):] = 1
    return input_ids.to(device), mask.to(device)


def _forward(model: Any, **inputs: Any) -> Any:
    """`model(**inputs)`, on the CPU with grouped-query attention reading each key/value head once
    (`attention.grouped_attention`)."""
    with grouped_attention(model):
        return model(**inputs)


_MIN_HEADER = 8  # shared leading tokens worth a pass of their own


class _Header:
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
        if length < _MIN_HEADER or not _forward_accepts(model, "position_ids"):
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
        input_ids, mask = _left_pad([row[self.length:] for row in rows], pad_id, device)
        positions = self.length + (mask.cumsum(-1) - 1).clamp(min=0)
        if not self.length:
            extra = {"position_ids": positions} if _forward_accepts(model, "position_ids") else {}
            return (_forward(model, input_ids=input_ids, attention_mask=mask, use_cache=True, **extra, **kwargs), mask,
                    positions)
        cache = DynamicCache()
        for index, layer in enumerate(self.cache.layers):  # expanded views: the forward's concatenation copies
            cache.update(layer.keys.expand(len(rows), -1, -1, -1), layer.values.expand(len(rows), -1, -1, -1), index)
        mask = torch.cat([mask.new_ones((len(rows), self.length)), mask], dim=1)
        output = _forward(model, input_ids=input_ids, attention_mask=mask, cache=cache, position_ids=positions,
                          use_cache=True, **kwargs)
        return output, mask, positions


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
    ends = _end_of_text_ids(model, tokenizer)
    budget = config.max_new_tokens or task.max_new_tokens
    use_positions = _forward_accepts(model, "position_ids")
    digits = digit_tokens(tokenizer)
    last_only = {"logits_to_keep": 1} if _forward_accepts(model, "logits_to_keep") else {}
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

    header = _Header(model, ids)

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
                    yield from _stream_in_batches(model, tokenizer, ids, order, task, config)
                    return
                cache = SlotCache(len(prefilled.layers), min(config.batch_size, len(order)))
                slots = [None] * cache.rows
                free = list(range(cache.rows))
            rows, place = free[:len(take)], []
            for k, (row, index, token) in enumerate(zip(rows, take, chosen.tolist())):
                entry = _Row(index, ids[index], digits)
                if finished(entry, token):
                    yield index, _finish(tokenizer, entry.tokens, len(entry.tokens), ends)
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
        output = _forward(model, input_ids=step_ids.to(device), attention_mask=cache.step_mask(width), cache=cache,
                          use_cache=True, **extra)
        counts = [0] * len(slots)  # columns each row keeps: its fed token and the drafts it accepted
        for k, chosen in zip(live, output.logits.argmax(-1)[live].tolist()):  # argmax first: no logits copied
            row, draft = slots[k], drafts[k]
            accepted = next((j for j, token in enumerate(draft) if token != chosen[j]), len(draft))
            counts[k] = 1 + accepted
            for token in chosen[:accepted + 1]:
                if finished(row, token):
                    yield row.index, _finish(tokenizer, row.tokens, len(row.tokens), ends)
                    slots[k] = None
                    break
        if width > 1:
            cache.keep(counts, width)


def _stream_in_batches(model: Any, tokenizer: Any, ids: list[list[int]], order: list[int], task: Task,
                       config: DecodeConfig) -> Iterator[tuple[int, Generation]]:
    """`model.generate` on consecutive batches of `order` (the prompts' token ids padded here)."""
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        input_ids, mask = _left_pad([ids[i] for i in batch], tokenizer.pad_token_id, next(model.parameters()).device)
        yield from zip(batch, _hf_generate(model, tokenizer, {"input_ids": input_ids, "attention_mask": mask}, task,
                                           config))


def _hf_generate(model: Any, tokenizer: Any, batch: Any, task: Task, config: DecodeConfig) -> list[Generation]:
    """`model.generate`: beam search, no KV cache, and prompt-learning adapters (whose virtual tokens PEFT
    inserts inside `generate`)."""
    width = batch["input_ids"].shape[1]  # (batch, width): pads on the left, masked out
    stop = AnswerStop(tokenizer, task) if config.stop_rules else None
    output = model.generate(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        max_new_tokens=config.max_new_tokens or task.max_new_tokens, do_sample=False,
        num_beams=config.num_beams, use_cache=config.use_cache, pad_token_id=tokenizer.pad_token_id,
        temperature=None, top_p=None, top_k=None,  # unset the model's sampling defaults: decoding is deterministic
        stopping_criteria=StoppingCriteriaList([stop]) if stop else None,
    )
    ends = _end_of_text_ids(model, tokenizer)
    # A row ends at its stop point or its first end-of-text token; what follows is pad filler.
    return [_finish(tokenizer, tokens, stop.stopped_at.get(row, len(tokens)) if stop else len(tokens), ends)
            for row, tokens in enumerate(output[:, width:].tolist())]


def _check_tokenizer(tokenizer: Any) -> None:
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
    _check_tokenizer(tokenizer)
    model.eval()
    if not prompts:
        return
    ids = tokenizer(prompts, add_special_tokens=adds_special_tokens(template))["input_ids"]
    order = [i for batch in plan_batches([len(x) for x in ids], len(ids)) for i in batch]  # longest first
    with packed_linears(model):
        if config.num_beams == 1 and config.use_cache and not _is_prompt_learning(model):
            yield from _greedy_stream(model, tokenizer, ids, order, task, config)
        else:
            yield from _stream_in_batches(model, tokenizer, ids, order, task, config)


def generate_batch(model: Any, tokenizer: Any, prompts: list[str], task: Task, config: DecodeConfig,
                   template: str = "original") -> list[Generation]:
    """The responses to `prompts`, in their order (`generate_stream` with all of them decoding together)."""
    config = replace(config, batch_size=max(1, len(prompts)))
    results = dict(generate_stream(model, tokenizer, prompts, task, config, template))
    return [results[i] for i in range(len(prompts))]


@torch.no_grad()
def continuation_logliks(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], *, template: str = "original",
                         batch_size: int = 8) -> list[float]:
    """Sum of log-probabilities of each continuation given its context (lm-eval's loglikelihood).

    Context and continuation are tokenised apart, as training tokenises a prompt and its response
    (`templates.encode_pair`): the continuation's tokens are those the model was trained to produce after that
    prompt (tokenised as one text, the original template's trailing spaces would merge with the continuation's
    first word).

    The labels of a question share its whole context, so each context runs once, with the leading tokens its
    continuations share ("the correct answer is"): its keys/values are computed for a batch of contexts,
    repeated for each of the context's continuations, and only the continuations' own tokens before their last
    run again; labels that differ in their last token only need no second pass (lm-eval runs one sequence per
    question for the same reason). Prompt-learning adapters, whose virtual tokens PEFT adds inside the forward
    pass, take the plain path: one sequence per pair.

    Args:
        pairs: (context, continuation) strings; pairs with the same context are scored together.
        template: the prompts' template (whether the tokenizer adds special tokens).
        batch_size: contexts (plain path: sequences) per forward pass.
    """
    model.eval()
    encoded = [encode_pair(tokenizer, context, continuation, template) for context, continuation in pairs]
    with plain_linears():  # F.linear even inside an evaluation's packed block: the values are results
        if _is_prompt_learning(model):
            return _plain_logliks(model, tokenizer, encoded, batch_size)
        return _shared_logliks(model, tokenizer, encoded, batch_size)


def _shared_logliks(model: Any, tokenizer: Any, encoded: list[tuple[list[int], list[int]]], batch_size: int
                    ) -> list[float]:
    """`continuation_logliks` with each distinct context run once."""
    groups: dict[tuple[int, ...], list[int]] = {}  # context ids -> indices of its pairs, in order
    for index, (context_ids, _) in enumerate(encoded):
        groups.setdefault(tuple(context_ids), []).append(index)
    scores = [0.0] * len(encoded)
    contexts = sorted(groups, key=len, reverse=True)  # similar lengths together: little padding
    header = _Header(model, contexts)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        continuations = [[encoded[i][1] for i in groups[c]] for c in chunk]
        for indices, score in zip((groups[c] for c in chunk), _shared_context_logliks(model, tokenizer, header, chunk,
                                                                                       continuations)):
            for index, value in zip(indices, score):
                scores[index] = value
    return scores


def _shared_context_logliks(model: Any, tokenizer: Any, header: _Header, contexts: list[tuple[int, ...]],
                            continuations: list[list[list[int]]]) -> list[list[float]]:
    """Per context, the log-likelihood of each of its continuations, the context run once (left-padded, so
    every context ends in the same column and the continuations follow it directly; the header that all
    contexts share run once for all).

    The leading tokens that a context's continuations share ("the correct answer is" before each label) run
    with the context, once, and are scored from its logits; only what follows them runs once per continuation,
    from the context's repeated cache, and a continuation that differs only in its last token needs no pass of
    its own: its first differing token is predicted by the context's last position.
    """
    device = next(model.parameters()).device
    shared = [_common_prefix(group) for group in continuations]
    extended = [tuple(context) + tuple(prefix) for context, prefix in zip(contexts, shared)]
    keep = 1 + max(len(prefix) for prefix in shared)  # positions whose logits score a token
    kept = {"logits_to_keep": keep} if _forward_accepts(model, "logits_to_keep") else {}
    head, mask, positions = header.prefill(model, extended, tokenizer.pad_token_id, **kept)
    context_log_probs = torch.log_softmax(head.logits[:, -keep:].float(), dim=-1)  # (contexts, keep, vocab)
    first = context_log_probs[:, -1]  # each continuation's first token after the shared ones
    base = []  # per context, the log-probability of its shared tokens
    for row, prefix in enumerate(shared):
        targets = torch.tensor(prefix, dtype=torch.long, device=device)
        base.append(context_log_probs[row, keep - 1 - len(prefix):keep - 1].gather(1, targets[:, None]).sum())
    counts = [len(group) for group in continuations]
    rows = [row for row, n in enumerate(counts) for _ in range(n)]
    flat = [continuation[len(shared[row]):] for row, continuation in zip(rows, (c for g in continuations for c in g))]
    tail = max(len(c) for c in flat) - 1  # the last token of a continuation predicts nothing we need
    if tail > 0:
        cache = head.cache
        cache.batch_select_indices(torch.tensor(rows, device=device))  # (rows, heads, width, dim)
        tail_ids = torch.full((len(flat), tail), tokenizer.pad_token_id, dtype=torch.long, device=device)
        tail_mask = torch.zeros((len(flat), tail), dtype=torch.long, device=device)
        for row, continuation in enumerate(flat):
            tail_ids[row, :len(continuation) - 1] = torch.tensor(continuation[:-1])
            tail_mask[row, :len(continuation) - 1] = 1
        full_mask = torch.cat([mask[rows], tail_mask], dim=1)
        extra = {}
        if _forward_accepts(model, "position_ids"):
            extra["position_ids"] = positions[rows, -1:] + 1 + torch.arange(tail, device=device)
        logits = _forward(model, input_ids=tail_ids, attention_mask=full_mask, cache=cache, use_cache=True,
                          **extra).logits
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # (rows, tail, vocab)
    results: list[float] = []
    for row, (context_row, continuation) in enumerate(zip(rows, flat)):
        total = base[context_row] + first[context_row, continuation[0]]
        if len(continuation) > 1:
            targets = torch.tensor(continuation[1:], device=device)
            total = total + log_probs[row, :len(continuation) - 1].gather(1, targets[:, None]).sum()
        results.append(float(total))
    grouped, offset = [], 0
    for n in counts:
        grouped.append(results[offset:offset + n])
        offset += n
    return grouped


def _common_prefix(continuations: list[list[int]]) -> list[int]:
    """The leading tokens all `continuations` share, leaving each at least its last token."""
    length = 0
    while (length < min(len(c) for c in continuations) - 1
           and all(c[length] == continuations[0][length] for c in continuations)):
        length += 1
    return continuations[0][:length]


def _plain_logliks(model: Any, tokenizer: Any, encoded: list[tuple[list[int], list[int]]], batch_size: int
                   ) -> list[float]:
    """One right-padded sequence per pair. Virtual tokens a prompt-learning adapter prepends to the logits are
    dropped by keeping the last `width` positions."""
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(encoded), batch_size):
        chunk = [(context + continuation, len(context)) for context, continuation in encoded[start:start + batch_size]]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (ids, _) in enumerate(chunk):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            mask[row, :len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits[:, -width:]
        for row, (ids, n_context) in enumerate(chunk):
            # logits at position t - 1 predict the token at t: (n_continuation, vocab) -> gathered targets
            log_probs = torch.log_softmax(logits[row, n_context - 1:len(ids) - 1].float(), dim=-1)
            targets = torch.tensor(ids[n_context:], device=log_probs.device)
            scores.append(log_probs.gather(1, targets[:, None]).sum().item())
    return scores
