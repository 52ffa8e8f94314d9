"""Prompt templates, byte for byte against strings written out by hand from the original scripts."""
from __future__ import annotations

import pytest

from llm_adapters.data.templates import TEMPLATES, build_prompt, build_training_text
from llm_adapters.models import load_model

S16 = " " * 16

# evaluate.py / commonsense_evaluate.py generate_prompt, no-input branch: one trailing space after the header,
# truly empty separator lines, and the prompt ends with 16 spaces after "### Response:\n".
EVAL_EXPECTED = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. \n"
    "\n"
    "                ### Instruction:\n"
    "                What is 2+3?\n"
    "\n"
    "                ### Response:\n"
    "                "
)
EVAL_INPUT_EXPECTED = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n"
    "\n"
    "                ### Instruction:\n"
    "                Add them.\n"
    "\n"
    "                ### Input:\n"
    "                2 and 3\n"
    "\n"
    "                ### Response:\n"
    "                "
)
# finetune.py generate_prompt: two trailing spaces after the header, separator lines of 16 spaces.
TRAIN_EXPECTED = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.  \n"
    "\n"
    "                ### Instruction:\n"
    "                What is 2+3?\n"
    "                \n"
    "                ### Response:\n"
    "                "
)


def test_build_prompt_original_eval_is_byte_exact() -> None:
    assert build_prompt("What is 2+3?") == EVAL_EXPECTED
    assert build_prompt("What is 2+3?").encode() == EVAL_EXPECTED.encode()


def test_build_prompt_original_eval_with_input_is_byte_exact() -> None:
    assert build_prompt("Add them.", "2 and 3") == EVAL_INPUT_EXPECTED


def test_build_prompt_original_train_is_byte_exact() -> None:
    assert build_prompt("What is 2+3?", stage="train") == TRAIN_EXPECTED
    prompt, response = build_training_text("What is 2+3?", "", "the correct answer is 5")
    assert prompt + response == TRAIN_EXPECTED + "the correct answer is 5"


def test_build_prompt_instruction_whitespace_is_kept() -> None:
    """AddSub instructions carry leading/trailing spaces; the original keeps them, so do we."""
    assert f"{S16} Joan has 3 apples. \n\n" in build_prompt(" Joan has 3 apples. ")


def test_build_prompt_chat_without_chat_template_raises() -> None:
    _, tokenizer = load_model("tiny-llama")
    with pytest.raises(ValueError, match="has none; accepted templates: original, alpaca, chat"):
        build_prompt("q", template="chat", tokenizer=tokenizer)


def test_build_prompt_unknown_template_lists_accepted() -> None:
    with pytest.raises(ValueError, match="accepted templates: " + ", ".join(TEMPLATES)):
        build_prompt("q", template="vicuna")


def test_build_prompt_chat_uses_the_tokenizers_template_with_a_generation_prompt() -> None:
    _, tokenizer = load_model("tiny-llama")
    tokenizer.chat_template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    assert build_prompt("Add them.", "2 and 3", template="chat", tokenizer=tokenizer) == (
        "<|user|>Add them.\n\n2 and 3\n<|assistant|>"
    )


def test_the_whole_split_tokenises_as_lm_eval_does_and_apart_as_training_does() -> None:
    from llm_adapters.data.templates import encode_pair
    from llm_adapters.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")  # where tokenisation matters: the real one
    prompt = build_prompt("Is the sky blue?\n\nAnswer format: true/false")  # ends in a newline and 16 spaces
    continuation = "the correct answer is true"

    def lm_eval_encode_pair(context: str, continuation: str) -> tuple[list[int], list[int]]:
        # lm-eval 0.4's HFLM._encode_pair, written out: trailing spaces move to the continuation
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
        whole = tokenizer(context + continuation)["input_ids"]
        context_ids = tokenizer(context)["input_ids"]
        return context_ids, whole[len(context_ids):]

    assert encode_pair(tokenizer, prompt, continuation, "original", "whole") == lm_eval_encode_pair(prompt,
                                                                                                   continuation)
    apart = encode_pair(tokenizer, prompt, continuation, "original")
    assert apart == (tokenizer(prompt)["input_ids"], tokenizer(continuation, add_special_tokens=False)["input_ids"])
    whole = encode_pair(tokenizer, prompt, continuation, "original", "whole")
    assert whole != apart and tokenizer.decode(whole[0] + whole[1]) == prompt + continuation
