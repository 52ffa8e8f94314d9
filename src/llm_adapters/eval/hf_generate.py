"""Decoding through `model.generate`, one length-sorted batch at a time: beam search (the `original` protocol),
decoding without the KV cache, prompt-learning adapters (whose virtual tokens PEFT inserts inside `generate`) and
models whose caches the continuous-batching stream cannot hold (sliding windows). The stop rule runs as a
transformers `StoppingCriteria` (`AnswerStop`)."""
from __future__ import annotations

from typing import Any, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from llm_adapters.data.tasks import Task
from llm_adapters.eval.decoding import DecodeConfig, Generation, end_of_text_ids, finish
from llm_adapters.eval.extract import answer_complete
from llm_adapters.eval.forward import left_pad

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



def stream_in_batches(model: Any, tokenizer: Any, ids: list[list[int]], order: list[int], task: Task,
                       config: DecodeConfig) -> Iterator[tuple[int, Generation]]:
    """`model.generate` on consecutive batches of `order` (the prompts' token ids padded here)."""
    for start in range(0, len(order), config.batch_size):
        batch = order[start:start + config.batch_size]
        input_ids, mask = left_pad([ids[i] for i in batch], tokenizer.pad_token_id, next(model.parameters()).device)
        yield from zip(batch, hf_generate(model, tokenizer, {"input_ids": input_ids, "attention_mask": mask}, task,
                                           config))


def hf_generate(model: Any, tokenizer: Any, batch: Any, task: Task, config: DecodeConfig) -> list[Generation]:
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
    ends = end_of_text_ids(model, tokenizer)
    # A row ends at its stop point or its first end-of-text token; what follows is pad filler.
    return [finish(tokenizer, tokens, stop.stopped_at.get(row, len(tokens)) if stop else len(tokens), ends)
            for row, tokens in enumerate(output[:, width:].tolist())]


