"""Answers that do not depend on the batch: on the embedded SmolLM2 with its real tokenizer, on a math, a letter
and a label task, the engine gives each question the same answer at batch 1, 5 and 32 with drafts on and off,
in fp32 and with bf16 products (the two precisions `decoding.batch_invariant` claims), and the same
log-likelihood choices at any batch size."""
from __future__ import annotations

import contextlib
from typing import Any

import pytest

from llm_adapters.data.io import load_task_data, resolve_data_dir
from llm_adapters.data.tasks import TASKS
from llm_adapters.data.templates import build_prompt, choice_response
from llm_adapters.eval.decoding import DecodeConfig, batch_invariant
from llm_adapters.eval.loglik import continuation_logliks
from llm_adapters.eval.packed import bf16_products
from llm_adapters.eval.stream import generate_stream
from llm_adapters.models import cpu_has_native_bf16, load_model
from shared_data import LLM_ADAPTERS_DATA

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
PRECISIONS = ["float32", pytest.param("bf16-products", marks=pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no bf16 units"))]


@pytest.fixture(scope="module")
def smollm2() -> tuple[Any, Any]:
    return load_model("smollm2-135m", dtype="float32")  # fp32 activations; bf16_products makes the products bf16


def _compute(model: Any, precision: str) -> Any:
    assert batch_invariant({"device": "cpu", "compute": precision})  # what these tests pin
    return bf16_products(model) if precision == "bf16-products" else contextlib.nullcontext()


def _prompts(task: str, limit: int) -> list[str]:
    records = load_task_data(TASKS[task], resolve_data_dir(str(LLM_ADAPTERS_DATA))).records[:limit]
    return [build_prompt(r["instruction"]) for r in records]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("task,limit,budget", [("gsm8k", 12, 96), ("aqua", 8, 96), ("boolq", 16, 32)])
def test_answers_do_not_depend_on_the_batch_or_the_drafts(task: str, limit: int, budget: int, precision: str,
                                                           smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    prompts = _prompts(task, limit)
    answers = {}
    with _compute(model, precision):
        for batch, drafts in ((32, 8), (1, 0), (5, 8)):
            config = DecodeConfig.for_protocol("fast", batch, budget, draft_tokens=drafts)
            out = dict(generate_stream(model, tokenizer, prompts, TASKS[task], config))
            answers[batch, drafts] = [out[i].text for i in range(len(prompts))]
    assert answers[32, 8] == answers[1, 0] == answers[5, 8]
    assert len(set(answers[1, 0])) > 1  # real, varied answers


@pytest.mark.parametrize("precision", PRECISIONS)
def test_log_likelihood_choices_do_not_depend_on_the_batch(precision: str, smollm2: tuple[Any, Any]) -> None:
    model, tokenizer = smollm2
    task = TASKS["arc-e"]
    pairs = [(prompt, choice_response(label)) for prompt in _prompts("arc-e", 12) for label in task.labels]
    with _compute(model, precision):
        scores = {size: continuation_logliks(model, tokenizer, pairs, batch_size=size) for size in (1, 8)}
    choices = {size: [max(range(len(task.labels)), key=lambda j: s[k * len(task.labels) + j])
                      for k in range(12)] for size, s in scores.items()}
    assert choices[1] == choices[8]
    assert max(abs(a - b) for a, b in zip(scores[1], scores[8])) < 1e-3
