"""Prompt-learning adapters (prefix, prompt tuning, P-tuning) on the embedded SmolLM2 with its own tokenizer and
10 virtual tokens: our batched, stop-ruled generation against an independent batch-1 loop (a full forward
pass and argmax per token: no `generate`, no cache), on a commonsense and a math task."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from llm_adapters.data.io import load_task_data
from llm_adapters.data.tasks import TASKS
from llm_adapters.data.templates import build_prompt
from llm_adapters.eval.extract import extract_answer
from llm_adapters.eval import DecodeConfig, generate_batch
from llm_adapters.methods import attach
from llm_adapters.models import load_model
from shared_data import LLM_ADAPTERS_DATA

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
BUDGET = {"boolq": 20, "gsm8k": 24}  # tokens: past the answer of the first, into the rationale of the second


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    return load_model("smollm2-135m", device="cpu")


def _argmax_loop(model: Any, tokenizer: Any, prompt: str, steps: int) -> list[int]:
    ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
    ends = {tokenizer.eos_token_id, *([model.generation_config.eos_token_id] if isinstance(
        model.generation_config.eos_token_id, int) else model.generation_config.eos_token_id or [])}
    tokens: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if token in ends:
            break
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokens


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning"])
@pytest.mark.parametrize("task", ["boolq", "gsm8k"])
def test_prompt_learning_generation_is_the_start_of_an_independent_argmax_loop(smollm2: tuple[Any, Any],
                                                                               method: str, task: str) -> None:
    base, tokenizer = smollm2
    torch.manual_seed(0)
    model = attach(base, {"method": method, "num_virtual_tokens": 10}).eval()  # the base itself is not changed
    records = load_task_data(TASKS[task], LLM_ADAPTERS_DATA).records[:2]
    prompts = [build_prompt(r["instruction"]) for r in records]  # the original template: ends in 16 spaces
    ours = generate_batch(model, tokenizer, prompts, TASKS[task], DecodeConfig(max_new_tokens=BUDGET[task]))
    for prompt, generation in zip(prompts, ours):  # the shorter prompt is left-padded in the batch
        loop = _argmax_loop(model, tokenizer, prompt, BUDGET[task])
        loop_text = tokenizer.decode(loop, skip_special_tokens=True)
        assert loop_text.startswith(generation.text)
        assert tokenizer.decode(loop[:generation.n_tokens], skip_special_tokens=True) == generation.text
        assert extract_answer(task, generation.text) == extract_answer(task, loop_text)
