"""The generation engine: batched == one-by-one (every tiny architecture, every adapter method), stop rules,
the original protocol, eval mode, and log-likelihood scoring against an independent computation."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from llm_adapters.data.tasks import TASKS
from llm_adapters.data.templates import build_prompt
from llm_adapters.eval.extract import extract_answer
from llm_adapters.eval import attention, kvcache
from llm_adapters.eval import decoding, forward as forward_module, stream as stream_module
from llm_adapters.eval.decoding import DecodeConfig, plan_batches
from llm_adapters.eval.hf_generate import AnswerStop, hf_generate
from llm_adapters.eval.loglik import continuation_logliks
from llm_adapters.eval.stream import generate_batch, generate_stream
from llm_adapters.methods import METHODS, attach
from llm_adapters.models import TINY_MODELS, load_model
from helpers import memorise, perturb

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
    assert memorise(model, tokenizer, [prompt + response + tokenizer.eos_token for prompt, response in SCRIPT],
                    steps=250) < 0.1
    return model, tokenizer


def _one_by_one(model: Any, tokenizer: Any, prompts: list[str], task: str, config: DecodeConfig) -> list[Any]:
    """The reference: each prompt alone through transformers' own `generate` loop (with the stop rule as a
    StoppingCriteria), not through our pruned greedy loop."""
    model.eval()
    return [hf_generate(model, tokenizer, tokenizer([prompt], return_tensors="pt"), TASKS[task], config)[0]
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
    batch = tokenizer(PROMPTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        base_logits = model(**batch).logits[:, -1]
    peft_model = attach(model, {"method": method, "r": 4, "bottleneck_size": 8, "num_virtual_tokens": 3})
    perturb(peft_model)
    peft_model.train()  # generate_batch must switch dropout off itself
    config = DecodeConfig(max_new_tokens=8)
    batched = generate_batch(peft_model, tokenizer, PROMPTS[:3], TASKS["boolq"], config)
    assert not peft_model.training
    assert batched == _one_by_one(peft_model, tokenizer, PROMPTS[:3], "boolq", config)
    with torch.no_grad():  # the perturbed adapter changes the model: the comparison is not one of the base
        assert not torch.allclose(peft_model(**batch).logits[:, -1], base_logits, atol=1e-3)


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


# Prompts of many lengths, more of them than slots: rows finish at different steps and newcomers take their slots.
MANY = [build_prompt("Question " + "and more words " * k + "?") for k in (0, 5, 1, 9, 3, 0, 7, 2, 4, 6, 8)]


# Random tiny BLOOM and OPT repeat one token whatever the prompt; moved off their init they vary.
VARIED = {"tiny-bloom": 0.2, "tiny-opt": 0.3}


def _ending_early(model: Any, tokenizer: Any, prompts: list[str], budget: int) -> None:
    """Make one token the model generates an end-of-text id, chosen so that rows end after the most different
    numbers of tokens (a random tiny model otherwise runs every row to the budget, all together)."""
    rows = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer([prompt], return_tensors="pt")["input_ids"]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            rows.append(out[0, ids.shape[1]:].tolist())
    candidates = {token for row in rows for token in row}

    def spread(token: int) -> int:
        return len({row.index(token) if token in row else budget for row in rows})

    model.generation_config.eos_token_id = [max(sorted(candidates), key=spread), tokenizer.eos_token_id]


def _watch_drafts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, list[int]]]:
    """(width, columns kept per row) of every step that verified drafts."""
    steps: list[tuple[int, list[int]]] = []
    keep = kvcache.SlotCache.keep
    monkeypatch.setattr(kvcache.SlotCache, "keep",
                        lambda self, counts, width: (steps.append((width, list(counts))), keep(self, counts, width)))
    return steps


@pytest.mark.parametrize("name", TINY_MODELS)
@pytest.mark.parametrize("slots,draft_tokens", [(2, 0), (3, 0), (2, 8), (3, 4)])
def test_generate_stream_continuous_batching_equals_one_by_one(name: str, slots: int, draft_tokens: int,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished row's slot goes to the next prompt (own prefill, positions, cache row); rows verify drafts of
    their own text; the buffers grow and their dead columns are compacted away (made frequent by a small
    growth step): each prompt must still get what `generate` gives it alone, for every architecture
    (tiny-mistral's sliding-window cache takes the `generate` fallback)."""
    monkeypatch.setattr(kvcache, "_GROW", 4)
    compactions = []
    compact = kvcache.SlotCache.compact

    def watched(self: kvcache.SlotCache, live: list[int]) -> None:
        before = self.length
        compact(self, live)
        if self.length < before:
            compactions.append((before, self.length))

    monkeypatch.setattr(kvcache.SlotCache, "compact", watched)
    steps = _watch_drafts(monkeypatch)
    monkeypatch.setattr(stream_module, "_STEP_COST", 10_000)  # verify every draft, as a fixed cost this large would
    model, tokenizer = load_model(name)
    if name in VARIED:
        perturb(model, scale=VARIED[name])
    _ending_early(model, tokenizer, MANY, 20)
    config = DecodeConfig(batch_size=slots, max_new_tokens=20, stop_rules=False, draft_tokens=draft_tokens)
    streamed = list(generate_stream(model, tokenizer, MANY, TASKS["gsm8k"], config))
    assert sorted(i for i, _ in streamed) == list(range(len(MANY)))
    results = dict(streamed)
    reference = _one_by_one(model, tokenizer, MANY, "gsm8k", config)
    assert [results[i] for i in range(len(MANY))] == reference
    assert len({g.n_tokens for g in reference}) > 1  # rows did end at different steps
    assert bool(compactions) == (name != "tiny-mistral")
    # drafts were verified (accepted on most architectures: a random tiny model repeats itself)
    assert bool(steps) == (draft_tokens > 0 and name != "tiny-mistral")
    assert all(width <= draft_tokens + 1 for width, _ in steps)


def test_generate_stream_with_a_perturbed_adapter_and_stop_rules_equals_one_by_one(
        scripted: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The scripted model under a perturbed LoRA: stop rules end rows at different steps, two slots cycle
    through twelve prompts, drafts are accepted and rejected (the rejected columns masked out)."""
    model, tokenizer = scripted
    steps = _watch_drafts(monkeypatch)
    prompts = [prompt for prompt, _ in SCRIPT]
    peft_model = attach(model, {"method": "lora", "r": 4})
    perturb(peft_model, scale=0.05)
    for task in ("gsm8k", "boolq"):
        config = DecodeConfig(batch_size=2, max_new_tokens=40)
        results = dict(generate_stream(peft_model, tokenizer, prompts, TASKS[task], config))
        reference = _one_by_one(peft_model, tokenizer, prompts, task, config)
        assert [results[i] for i in range(len(prompts))] == reference
        assert len({g.n_tokens for g in reference}) > 2
    peft_model.unload()
    kept = [count for width, counts in steps for count in counts if count]
    assert any(count > 1 for count in kept)  # a draft accepted
    assert any(count < width for width, counts in steps for count in counts if count)  # and one rejected


def _draft_by_search(text: list[int], limit: int) -> list[int]:
    """The draft by its definition: the longest tail n-gram (n <= 3) that occurs earlier with a token after it,
    its latest such occurrence, and the text continued as if it repeated from there."""
    for n in (3, 2, 1):
        if len(text) < n:
            continue
        starts = [s for s in range(len(text) - n) if text[s:s + n] == text[-n:]]
        if starts:
            follower = starts[-1] + n
            draft = []
            extended = list(text)
            for _ in range(limit):
                extended.append(extended[len(extended) - (len(text) - follower)])
                draft.append(extended[-1])
            return draft
    return []


def test_row_drafts_what_followed_the_latest_tail_ngram_and_scores_its_guesses() -> None:
    generator = torch.Generator().manual_seed(0)
    for trial in range(200):
        prompt = torch.randint(0, 4, (int(torch.randint(1, 12, (1,), generator=generator)),), generator=generator)
        row = stream_module._Row(trial, prompt.tolist())
        for token in torch.randint(0, 4, (6,), generator=generator).tolist():
            assert row.draft(5) == _draft_by_search(row.text, 5)
            row.append(token)
        assert row.tokens == row.text[len(prompt):] and row.prompt_length == len(prompt)
    row = stream_module._Row(0, [5, 6, 7])
    assert row.draft(4) == []  # nothing repeats yet
    for token in [5, 6, 7, 5, 6]:
        row.append(token)
    assert row.draft(4) == [7, 5, 6, 7]  # a loop continues with its period
    assert row.rate > 0.5  # the last guesses (6 after 5) were right


CHAR_DIGITS = {ord(str(d)): d for d in range(10)}  # one token per character: the reference is string arithmetic


@pytest.mark.parametrize("numbers", [[1, 2], [10, 11], [7, 8, 9], [98, 99], [5, 10, 15], [20, 18, 16]])
def test_row_drafts_a_numbered_loop_counting_on(numbers: list[int]) -> None:
    """A loop whose numbers change by a step (through 9 -> 10 and 99 -> 100 too) is drafted with the numbers
    counting on; without the digits it is drafted as copied."""
    text = "Go\n" + "".join(f"{n}. ab\n" for n in numbers)
    step = numbers[-1] - numbers[-2]
    expected = "".join(f"{numbers[-1] + step * k}. ab\n" for k in (1, 2, 3))
    row = stream_module._Row(0, [ord(c) for c in text], CHAR_DIGITS)
    assert "".join(map(chr, row.draft(len(expected)))) == expected
    copied = stream_module._Row(0, [ord(c) for c in text])
    assert "".join(map(chr, copied.draft(6))) == f"{numbers[-1]}. ab\n"[:6]


def test_row_counts_on_mid_number_and_copies_what_does_not_count() -> None:
    def draft(text: str, limit: int) -> str:
        return "".join(map(chr, stream_module._Row(0, [ord(c) for c in text], CHAR_DIGITS).draft(limit)))

    assert draft("Go\n11. ab\n12. ab\n1", 9) == "3. ab\n14."  # the row has written the 1 of 13
    assert draft("Go\n18. ab\n19. ab\n1", 5) == "9. ab"  # a 1 cannot start 20: copied
    assert draft("Go\n3. ab\n3. ab\n", 9) == "3. ab\n3. "  # the same number: copied
    assert draft("Go\n8: ab\n9. ab\n", 5) == "9. ab"  # no earlier number between the same tokens
    assert draft("Go\n2. ab\n1. ab\n", 6) == "0. ab\n"  # counting down to 0, not below
    assert draft("Go\n1. ab\n0. ab\n", 5) == "0. ab"


def test_numbered_loops_take_fewer_steps_with_counted_drafts_and_the_same_tokens(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """tiny-llama taught numbered lists: the engine gives what `generate` gives each prompt alone, with the
    numbers counted on in the drafts and with them copied, and counting takes fewer steps."""
    model, tokenizer = load_model("tiny-llama")
    lists = [(f"List {w}:", "".join(f"\n{k}. {w}" for k in range(1, 16))) for w in ("ab", "cd", "ef")]
    assert memorise(model, tokenizer, [p + r + tokenizer.eos_token for p, r in lists], steps=250) < 0.1
    monkeypatch.setattr(stream_module, "_STEP_COST", 10_000)  # verify every draft, as a fixed cost this large would
    prompts = [prompt for prompt, _ in lists]
    config = DecodeConfig(batch_size=3, max_new_tokens=120, stop_rules=False)
    reference = _one_by_one(model, tokenizer, prompts, "gsm8k", config)
    assert [g.text for g in reference] == [response for _, response in lists]  # the lists were learnt
    forward, steps = stream_module.model_forward, {}

    def counted(model: Any, **inputs: Any) -> Any:
        steps[name] = steps.get(name, 0) + 1
        return forward(model, **inputs)

    monkeypatch.setattr(stream_module, "model_forward", counted)
    for name, digits in (("counted", stream_module.digit_tokens), ("copied", lambda tokenizer: {})):
        monkeypatch.setattr(stream_module, "digit_tokens", digits)
        results = dict(generate_stream(model, tokenizer, prompts, TASKS["gsm8k"], config))
        assert [results[i] for i in range(len(prompts))] == reference
    assert steps["counted"] < steps["copied"]


def test_digit_tokens_are_the_single_digit_tokens_of_the_smollm2_vocabulary(smollm2_tokenizer: Any) -> None:
    tokenizer = smollm2_tokenizer
    by_decoding = {i: int(text) for i in range(len(tokenizer)) if len(text := tokenizer.decode([i])) == 1
                   and text in "0123456789"}
    assert stream_module.digit_tokens(tokenizer) == by_decoding and len(by_decoding) == 10
    # a vocabulary with one digit: the missing ones map to the unknown token, which is no digit
    vocabulary = {"<unk>": 0, "a": 1, "7": 2}
    small = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>")),
                                    unk_token="<unk>")
    assert stream_module.digit_tokens(small) == {2: 7}
    text = "Steps:\n12. The sisters have 100 signatures.\n13. The sisters have 100 signatures.\n"
    row = stream_module._Row(0, tokenizer(text)["input_ids"], by_decoding)
    assert tokenizer.decode(row.draft(11)) == "14. The sisters have 100 signatures"  # 1, 4, ., The, ..., 1, 0, 0


def test_prefill_size_is_the_first_group_of_a_cheapest_split() -> None:
    """Against every split into consecutive groups (brute force), each group costing the fixed cost plus its
    size times its first (longest) length."""
    def cost(lengths: list[int], sizes: list[int]) -> int:
        total, start = 0, 0
        for size in sizes:
            total += stream_module._PREFILL_COST + size * lengths[start]
            start += size
        return total

    def splits(n: int) -> list[list[int]]:
        return [[n]] + [[first] + rest for first in range(1, n) for rest in splits(n - first)]

    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        n = int(torch.randint(1, 10, (1,), generator=generator))
        lengths = sorted(torch.randint(5, 200, (n,), generator=generator).tolist(), reverse=True)
        best = min(cost(lengths, sizes) for sizes in splits(n))
        size = stream_module._prefill_size(lengths)
        assert best == min(cost(lengths, sizes) for sizes in splits(n) if sizes[0] == size)
    assert stream_module._prefill_size([167] + [100] * 7) == 1  # an outlier alone
    assert stream_module._prefill_size([30] * 32) == 32  # one length: one group


def test_step_width_verifies_drafts_only_when_they_pay() -> None:
    cost = stream_module._STEP_COST
    assert stream_module._step_width([([], 0.9)] * 4, 4) == 1  # no drafts
    assert stream_module._step_width([([1] * 8, 1.0)] * 4, 4) == 9  # certain drafts, a step costs more than 36
    assert stream_module._step_width([([1] * 8, 0.05)] * 32, 32) == 1  # poor guesses
    # one row with a sure draft among many rows without: its columns would cost every row
    assert stream_module._step_width([([1] * 8, 1.0)] + [([], 0.5)] * (cost * 2), cost * 2) == 1
    # the chosen width maximises expected tokens per unit of work (checked against every width)
    drafts = [([1] * 8, 0.9), ([1] * 3, 0.6), ([], 0.5), ([1] * 5, 0.8)]

    def value(width: int) -> float:
        tokens = sum(1 + sum(p ** i for i in range(1, min(len(d), width - 1) + 1)) for d, p in drafts)
        return tokens / (cost + len(drafts) * width)

    assert stream_module._step_width(drafts, len(drafts)) == max(range(1, 10), key=value)


def test_engine_forwards_run_grouped_attention_and_leave_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = load_model("tiny-llama")
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped-query attention
    perturb(model, scale=0.02)
    seen = []
    forward = model.forward
    model.forward = lambda **inputs: (seen.append(model.config._attn_implementation), forward(**inputs))[1]
    ids, mask = torch.tensor([[0, 5, 6, 7], [4, 5, 6, 7]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    with torch.no_grad():
        switched = forward_module.model_forward(model, input_ids=ids, attention_mask=mask).logits
        plain = forward(input_ids=ids, attention_mask=mask).logits
    assert seen == [attention.NAME] and model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(switched, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_generate_stream_prompt_learning_takes_generate_in_batches(method: str) -> None:
    model, tokenizer = load_model("tiny-llama")
    peft_model = attach(model, {"method": method, "num_virtual_tokens": 3}).eval()
    perturb(peft_model)
    config = DecodeConfig(batch_size=2, max_new_tokens=6, stop_rules=False)
    results = dict(generate_stream(peft_model, tokenizer, MANY[:5], TASKS["gsm8k"], config))
    assert [results[i] for i in range(5)] == _one_by_one(peft_model, tokenizer, MANY[:5], "gsm8k", config)


def test_slot_cache_moves_every_row_right_for_a_longer_newcomer() -> None:
    """Prompts come longest first, so a newcomer fits in front of the last column; a longer one (possible
    through the class alone) shifts every row right: both rows' next logits must equal each prompt alone."""
    model, tokenizer = load_model("tiny-llama")
    perturb(model, scale=0.02)
    short, long = tokenizer("ab")["input_ids"], tokenizer("a much longer prompt")["input_ids"]
    cache = None
    for row, ids in enumerate((short, long)):
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), use_cache=True)
        if cache is None:
            cache = kvcache.SlotCache(len(output.cache.layers), 2)
        cache.admit([row], output.cache, torch.ones((1, len(ids)), dtype=torch.long))
    assert cache.length == len(long)
    assert cache.mask[:, :cache.length].sum(1).tolist() == [len(short), len(long)]
    assert cache.mask[0, :len(long) - len(short)].sum() == 0  # the short row's real columns end with the long one's
    step = torch.tensor([[7], [9]])
    positions = torch.tensor([[len(short)], [len(long)]])
    with torch.no_grad():
        logits = model(input_ids=step, attention_mask=cache.step_mask(), cache=cache, position_ids=positions).logits
        for row, ids in enumerate((short, long)):
            alone = model(input_ids=torch.tensor([ids + [int(step[row])]])).logits[0, -1]
            assert torch.allclose(logits[row, -1], alone, atol=1e-5)


def test_slot_cache_select_moves_only_the_rows_past_the_kept_count_and_keeps_every_row_exact() -> None:
    """The tail's shrink: rows 0 and 3 of 4 kept, so row 3 moves into idle row 1, and the buffers become views of
    their first two rows (no copy of the others). The rows' next logits must equal each prompt alone."""
    model, tokenizer = load_model("tiny-llama")
    perturb(model, scale=0.02)
    prompts = [tokenizer(text)["input_ids"] for text in ("a much longer prompt", "ab", "cde", "the last one")]
    cache = None
    for row, ids in enumerate(prompts):
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), use_cache=True)
        if cache is None:
            cache = kvcache.SlotCache(len(output.cache.layers), 4)
        cache.admit([row], output.cache, torch.ones((1, len(ids)), dtype=torch.long))
    buffer = cache.layers[0].key_buffer
    assert cache.select([0, 3]) == [0, 3]
    assert cache.rows == 2 and cache.layers[0].key_buffer.data_ptr() == buffer.data_ptr()
    assert cache.layers[0].key_buffer.shape[0] == cache.mask.shape[0] == 2
    kept = [prompts[0], prompts[3]]
    step = torch.tensor([[7], [9]])
    positions = torch.tensor([[len(ids)] for ids in kept])
    with torch.no_grad():
        logits = model(input_ids=step, attention_mask=cache.step_mask(), cache=cache, position_ids=positions).logits
        for row, ids in enumerate(kept):
            alone = model(input_ids=torch.tensor([ids + [int(step[row])]])).logits[0, -1]
            assert torch.allclose(logits[row, -1], alone, atol=1e-5)
    assert cache.select([1]) == [1] and cache.rows == 1  # the survivor moves into row 0


def test_text_decoder_gives_the_tokenizers_own_decode(smollm2_tokenizer: Any) -> None:
    """The stop rule's decoder must read what `tokenizer.decode` (the final text) reads: special tokens skipped,
    bytes of one character split across tokens, and a tokenizer that cleans up its spaces."""
    tokenizer = smollm2_tokenizer
    decode = decoding.text_decoder(tokenizer)
    generator = torch.Generator().manual_seed(0)
    texts = ["The answer is 42.\n", "Größe: 3 × 4 = 12 ✓", "true</s>"]
    rows = [tokenizer(t)["input_ids"] for t in texts] + [[tokenizer.eos_token_id, 1, 2]]
    rows += [torch.randint(len(tokenizer), (n,), generator=generator).tolist() for n in (1, 5, 40, 200)]
    for ids in rows + [ids[:k] for ids in rows for k in range(len(ids))]:  # prefixes: a character cut in half
        assert decode(ids) == tokenizer.decode(ids, skip_special_tokens=True)
    vocabulary = {"<unk>": 0, "a": 1, ".": 2}
    cleaning = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>")),
                                       unk_token="<unk>", clean_up_tokenization_spaces=True)
    assert decoding.text_decoder(cleaning)([1, 2]) == cleaning.decode([1, 2]) == "a."


def test_generate_batch_original_rules_get_the_full_generation(scripted: tuple[Any, Any]) -> None:
    """The original rules read the whole response (its last number): under them the stop rule must not cut it."""
    model, tokenizer = scripted
    prompts = [prompt for prompt, _ in SCRIPT[:8]]
    config = DecodeConfig.for_protocol("fast", max_new_tokens=60, rules="original")
    assert not config.stop_rules and DecodeConfig.for_protocol("fast").stop_rules
    full = generate_batch(model, tokenizer, prompts, TASKS["gsm8k"], config)
    assert [g.text for g in full] == [response for _, response in SCRIPT[:8]]
    # "... The answer is 5. Next 7 items": the original rules read 7 in the full text, 5 in a cut one.
    assert extract_answer("gsm8k", full[1].text, rules="original") == 7.0


def test_generate_batch_original_protocol_beam_search_batched_equals_one_by_one() -> None:
    model, tokenizer = load_model("tiny-qwen2")
    config = DecodeConfig.for_protocol("original", batch_size=4, max_new_tokens=6)
    assert (config.num_beams, config.stop_rules) == (4, False)
    batched = generate_batch(model, tokenizer, PROMPTS[:4], TASKS["gsm8k"], config)
    assert batched == _one_by_one(model, tokenizer, PROMPTS[:4], "gsm8k", config)


def test_answer_stop_counts_new_tokens_from_its_first_call_whatever_comes_before() -> None:
    """Called as `generate` calls it, once per new token: what precedes the first new token (padding, a
    prompt-learning adapter's virtual-token placeholders) is never read as output."""
    _, tokenizer = load_model("tiny-llama")
    # The prompts end in "true" (an answer label): read as output, they would stop both rows at once.
    prefix = tokenizer(["<s>" * 10 + "the answer is true", "true"], return_tensors="pt", padding=True)["input_ids"]
    new = torch.tensor(tokenizer([" true ", "maybe "], add_special_tokens=False)["input_ids"])  # a byte a token
    stop = AnswerStop(tokenizer, TASKS["boolq"])
    flags = [stop(torch.cat([prefix, new[:, :k]], dim=1), None).tolist() for k in range(1, new.shape[1] + 1)]
    assert flags[:5] == [[False, False]] * 5  # " true" is not a whole word until the space after it
    assert flags[5] == [True, False] and stop.stopped_at == {0: 6}


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_generate_batch_original_protocol_with_prompt_learning_batched_equals_one_by_one(method: str,
                                                                                        batch_size: int) -> None:
    """4-beam search with prefix tuning: the prefix cache must be repeated for the beams (it crashed)."""
    model, tokenizer = load_model("tiny-llama")
    peft_model = attach(model, {"method": method, "num_virtual_tokens": 3}).eval()
    config = DecodeConfig.for_protocol("original", batch_size=batch_size, max_new_tokens=5)
    prompts = PROMPTS[:batch_size]
    batched = generate_batch(peft_model, tokenizer, prompts, TASKS["gsm8k"], config)
    assert batched == _one_by_one(peft_model, tokenizer, prompts, "gsm8k", config)
    assert all(g.n_tokens == 5 for g in batched)


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
    """Score one pair alone, unpadded, token by token through the model's own probabilities, on the tokens
    training gives the pair: the prompt with the tokenizer's special tokens, the response apart without them."""
    context_ids = tokenizer(context)["input_ids"]
    whole = context_ids + tokenizer(continuation, add_special_tokens=False)["input_ids"]
    logits = model(input_ids=torch.tensor([whole])).logits[0, -len(whole):]
    probabilities = torch.softmax(logits.double(), dim=-1)
    return sum(float(torch.log(probabilities[t - 1, whole[t]])) for t in range(len(context_ids), len(whole)))


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


@pytest.fixture(scope="module")
def smollm2_tokenizer() -> Any:
    from llm_adapters.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


def test_continuation_logliks_tokenise_like_training_with_the_smollm2_tokenizer(smollm2_tokenizer: Any) -> None:
    """With the original template the prompt ends in 16 spaces: tokenised with the continuation as one text,
    those spaces merge with its first word, so the continuation's tokens would not be those training saw."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm_adapters.data.templates import choice_response
    from llm_adapters.train.batches import encode_example

    tokenizer = smollm2_tokenizer
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompt = build_prompt("Please answer the following question with true or false, question: is the sky blue?"
                          "\n\nAnswer format: true/false")
    response = choice_response("true")
    joint = tokenizer(prompt + response)["input_ids"]
    apart = tokenizer(prompt)["input_ids"] + tokenizer(response, add_special_tokens=False)["input_ids"]
    assert joint != apart  # the test can tell the two tokenisations apart
    # Training's tokens for the same (prompt, response), from the training code itself:
    record = {"instruction": "x", "input": "", "output": response}
    ids, _, prompt_len, _ = encode_example(record, tokenizer, template="alpaca", cutoff_len=512,
                                           train_on_inputs=False)
    assert ids[prompt_len:-1] == tokenizer(response, add_special_tokens=False)["input_ids"]
    pairs = [(prompt, choice_response(label)) for label in ("true", "false")]
    with torch.no_grad():
        expected = [_independent_loglik(model, tokenizer, c, x) for c, x in pairs]
        scores = continuation_logliks(model, tokenizer, pairs, template="original")
    assert scores == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_continuation_logliks_share_the_context_exactly_on_every_architecture(name: str) -> None:
    """Contexts of different lengths (left-padded together), continuations of different lengths (right-padded
    after the repeated context cache), against one unpadded sequence per pair."""
    model, tokenizer = load_model(name)
    continuations = ["the correct answer is true", "the correct answer is false", "no", "x"]
    pairs = [(prompt, continuation) for prompt in PROMPTS[:3] for continuation in continuations]
    with torch.no_grad():
        expected = [_independent_loglik(model, tokenizer, c, x) for c, x in pairs]
    assert continuation_logliks(model, tokenizer, pairs, batch_size=2) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("name", TINY_MODELS)
def test_continuation_logliks_run_the_labels_shared_tokens_with_the_context(name: str) -> None:
    """A context's continuations that share leading tokens: labels differing in their last tokens, one that is a
    prefix of another (each keeps at least its last token of its own) and a lone continuation (all but its last
    token run with the context), in one batch of contexts, against one unpadded sequence per pair."""
    model, tokenizer = load_model(name)
    groups = [["the correct answer is true", "the correct answer is false"],
              ["the answer", "the answer is x", "the answer is y"],
              ["only one continuation here"]]
    pairs = [(prompt, continuation) for prompt, group in zip(PROMPTS, groups) for continuation in group]
    with torch.no_grad():
        expected = [_independent_loglik(model, tokenizer, c, x) for c, x in pairs]
    assert continuation_logliks(model, tokenizer, pairs, batch_size=3) == pytest.approx(expected, abs=1e-4)


def test_continuation_logliks_need_one_pass_per_batch_when_labels_differ_in_their_last_token(
        smollm2_tokenizer: Any) -> None:
    """With the SmolLM2 tokenizer, "the correct answer is true" and "... false" differ in their last token only:
    the shared tokens run with the context, so a batch of contexts takes one forward pass (after the template
    header's), with no pass for the continuations."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm_adapters.data.templates import choice_response

    tokenizer = smollm2_tokenizer
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    labels = [choice_response(label) for label in ("true", "false")]
    assert [len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in labels] == [5, 5]
    pairs = [(prompt, label) for prompt in PROMPTS for label in labels]
    passes = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: passes.append(1), with_kwargs=True)
    try:
        with torch.no_grad():
            scores = continuation_logliks(model, tokenizer, pairs, batch_size=2)
    finally:
        handle.remove()
    assert len(passes) == 1 + 3  # the header, then 5 contexts in batches of 2
    with torch.no_grad():
        expected = [_independent_loglik(model, tokenizer, c, x) for c, x in pairs]
    assert scores == pytest.approx(expected, abs=1e-4)
