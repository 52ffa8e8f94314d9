"""The generation engine: batched == one-by-one (every tiny architecture, every adapter method), stop rules,
the original protocol, eval mode, and log-likelihood scoring against an independent computation."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from llm_adapters.data.tasks import TASKS
from llm_adapters.data.templates import build_prompt
from llm_adapters.eval.extract import extract_answer
from llm_adapters.eval.generate import (
    AnswerStop,
    _hf_generate,
    DecodeConfig,
    continuation_logliks,
    generate_batch,
    plan_batches,
)
from llm_adapters.methods import METHODS, attach
from llm_adapters.models import TINY_MODELS, load_model

PROMPTS = [build_prompt(q) for q in ("What is 2+3?", "Is the sky blue? Answer format: true/false", "7 * 6 = ?",
                                       "Name a colour.", "A longer question about trains and their speeds?")]

# A tiny model taught to answer, then ramble on: the stop rules must cut after the answer.
SCRIPT = [(f"Q{i}: {i}+{i + 3}?\nA:", f" {i} plus {i + 3}. The answer is {2 * i + 3}. Next {i * 7} items"
           + ("\n" if i % 2 else "")) for i in range(8)]
SCRIPT += [(f"B{i}: yes or no {i}?\nA:", f" So {'true' if i % 2 else 'false'} then true false") for i in range(4)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scripted() -> tuple[Any, Any]:
    """tiny-llama trained for a few seconds to reproduce SCRIPT."""
    model, tokenizer = load_model("tiny-llama")
    texts = [prompt + response + tokenizer.eos_token for prompt, response in SCRIPT]
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    tokenizer.padding_side = "left"
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(250):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1
    return model.eval(), tokenizer


def _one_by_one(model: Any, tokenizer: Any, prompts: list[str], task: str, config: DecodeConfig) -> list[Any]:
    """The reference: each prompt alone through transformers' own `generate` loop (with the stop rule as a
    StoppingCriteria), not through our pruned greedy loop."""
    model.eval()
    return [_hf_generate(model, tokenizer, tokenizer([prompt], return_tensors="pt"), TASKS[task], config)[0]
            for prompt in prompts]


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("task", ["gsm8k", "boolq"])
def test_generate_batch_batched_equals_one_by_one(name: str, task: str) -> None:
    model, tokenizer = load_model(name)
    config = DecodeConfig(max_new_tokens=12)
    batched = generate_batch(model, tokenizer, PROMPTS, TASKS[task], config)
    assert batched == _one_by_one(model, tokenizer, PROMPTS, task, config)
    assert all(0 < g.n_tokens <= 12 for g in batched)


@pytest.mark.parametrize("method", METHODS)
def test_generate_batch_every_adapter_method_batched_equals_one_by_one(method: str) -> None:
    model, tokenizer = load_model("tiny-llama")
    peft_model = attach(model, method)
    peft_model.train()  # generate_batch must switch dropout off itself
    config = DecodeConfig(max_new_tokens=8)
    batched = generate_batch(peft_model, tokenizer, PROMPTS[:3], TASKS["boolq"], config)
    assert not peft_model.training
    assert batched == _one_by_one(peft_model, tokenizer, PROMPTS[:3], "boolq", config)


@pytest.mark.parametrize("task", ["gsm8k", "boolq"])
def test_generate_batch_stop_rules_cut_after_the_answer_and_keep_it(scripted: tuple[Any, Any], task: str) -> None:
    model, tokenizer = scripted
    prompts = [prompt for prompt, _ in SCRIPT]
    fast = generate_batch(model, tokenizer, prompts, TASKS[task], DecodeConfig(max_new_tokens=60))
    full = generate_batch(model, tokenizer, prompts, TASKS[task], DecodeConfig(max_new_tokens=60, stop_rules=False))
    assert fast == _one_by_one(model, tokenizer, prompts, task, DecodeConfig(max_new_tokens=60))
    assert [f.text for f in full] == [response for _, response in SCRIPT]  # the script was learnt
    for quick, whole in zip(fast, full):
        assert whole.text.startswith(quick.text)
        assert extract_answer(task, quick.text) == extract_answer(task, whole.text)
    assert sum(f.n_tokens for f in fast) < sum(f.n_tokens for f in full)
    if task == "gsm8k":
        assert fast[1].text == " 1 plus 4. The answer is 5. "
    else:
        assert fast[-1].text == " So true "


def test_generate_batch_original_protocol_beam_search_batched_equals_one_by_one() -> None:
    model, tokenizer = load_model("tiny-qwen2")
    config = DecodeConfig.for_protocol("original", batch_size=4, max_new_tokens=6)
    assert (config.num_beams, config.stop_rules) == (4, False)
    batched = generate_batch(model, tokenizer, PROMPTS[:4], TASKS["gsm8k"], config)
    assert batched == _one_by_one(model, tokenizer, PROMPTS[:4], "gsm8k", config)


def test_answer_stop_returns_one_flag_per_row_and_remembers_where() -> None:
    _, tokenizer = load_model("tiny-llama")
    rows = ["xx", "x"]
    prompt = tokenizer(rows, return_tensors="pt", padding=True)["input_ids"]
    stop = AnswerStop(tokenizer, TASKS["boolq"], prompt.shape[1])
    new = tokenizer(["true ", "maybe"], return_tensors="pt", padding=True)["input_ids"]
    flags = stop(torch.cat([prompt, new], dim=1), None)
    assert flags.dtype == torch.bool and flags.tolist() == [True, False]
    assert stop.stopped_at == {0: new.shape[1]}


def test_decode_config_rejects_bad_values_all_at_once() -> None:
    with pytest.raises(ValueError, match="protocol 'slow' is not one of fast, original; batch_size must be >= 1"):
        DecodeConfig(protocol="slow", batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop rules need greedy decoding"):
        DecodeConfig(num_beams=4)


def test_generate_batch_right_padding_tokenizer_raises() -> None:
    model, tokenizer = load_model("tiny-llama")
    tokenizer.padding_side = "right"
    with pytest.raises(ValueError, match="must pad on the left"):
        generate_batch(model, tokenizer, PROMPTS[:2], TASKS["boolq"], DecodeConfig())


def test_plan_batches_groups_by_length_longest_first() -> None:
    assert plan_batches([5, 1, 9, 3, 7], 2) == [[2, 4], [0, 3], [1]]


def _independent_loglik(model: Any, tokenizer: Any, context: str, continuation: str) -> float:
    """Score one pair alone, unpadded, token by token through the model's own probabilities."""
    whole = tokenizer(context + continuation)["input_ids"]
    n_context = len(tokenizer(context)["input_ids"])
    logits = model(input_ids=torch.tensor([whole])).logits[0, -len(whole):]
    probabilities = torch.softmax(logits.double(), dim=-1)
    return sum(float(torch.log(probabilities[t - 1, whole[t]])) for t in range(n_context, len(whole)))


@pytest.mark.parametrize("method", [None, "lora", "prompt", "prefix"])
def test_continuation_logliks_match_independent_computation_and_pick_argmax(method: str | None) -> None:
    model, tokenizer = load_model("tiny-llama")
    model = attach(model, method).eval() if method else model
    labels = TASKS["siqa"].labels
    pairs = [(prompt, f"the correct answer is {label}") for prompt in PROMPTS[:2] for label in labels]
    with torch.no_grad():
        expected = [_independent_loglik(model, tokenizer, c, x) for c, x in pairs]
    scores = continuation_logliks(model, tokenizer, pairs, batch_size=4)
    assert scores == pytest.approx(expected, abs=1e-4)
    for start in (0, len(labels)):
        chunk = scores[start:start + len(labels)]
        best = max(range(len(labels)), key=lambda i: expected[start + i])
        assert chunk.index(max(chunk)) == best
