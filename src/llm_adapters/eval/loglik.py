"""Log-likelihoods of fixed continuations (lm-eval's loglikelihood), for `--scoring loglik`:
`continuation_logliks`."""
from __future__ import annotations

from typing import Any

import torch

from llm_adapters.data.templates import encode_pair
from llm_adapters.eval.forward import Header, forward_accepts, is_prompt_learning, model_forward
from llm_adapters.eval.packed import plain_linears

@torch.no_grad()
def continuation_logliks(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], *, template: str = "original",
                         batch_size: int = 8, split: str = "apart") -> list[float]:
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
        split: `apart` (default) or `whole` (lm-eval's tokenisation), see `templates.encode_pair`.
    """
    model.eval()
    encoded = [encode_pair(tokenizer, context, continuation, template, split) for context, continuation in pairs]
    with plain_linears():  # F.linear even inside an evaluation's packed block: the values are results
        if is_prompt_learning(model):
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
    header = Header(model, contexts)
    for start in range(0, len(contexts), batch_size):
        chunk = contexts[start:start + batch_size]
        continuations = [[encoded[i][1] for i in groups[c]] for c in chunk]
        for indices, score in zip((groups[c] for c in chunk), _shared_context_logliks(model, tokenizer, header, chunk,
                                                                                       continuations)):
            for index, value in zip(indices, score):
                scores[index] = value
    return scores


def _shared_context_logliks(model: Any, tokenizer: Any, header: Header, contexts: list[tuple[int, ...]],
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
    kept = {"logits_to_keep": keep} if forward_accepts(model, "logits_to_keep") else {}
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
        if forward_accepts(model, "position_ids"):
            extra["position_ids"] = positions[rows, -1:] + 1 + torch.arange(tail, device=device)
        logits = model_forward(model, input_ids=tail_ids, attention_mask=full_mask, cache=cache, use_cache=True,
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
