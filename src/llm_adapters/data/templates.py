"""Prompt templates and response formats: the one home for what training and evaluation must agree on.

A train/eval mismatch of the prompt is the bug that spoiled the original's numbers, so everything both sides
depend on lives here: the prompt of each template (`build_prompt`), the response a commonsense item is trained
to give (`choice_response`), whether the tokenizer adds its special tokens (`adds_special_tokens`: a chat template
writes its own) and how a (prompt, response) pair becomes token ids (`encode_pair`: apart, so the boundary is
exact and the prompt's tokens are those the model sees alone at generation time).

`original-train` and `original-eval` reproduce the original LLM-Adapters strings byte for byte, quirks included:
the training template indents with 16 spaces and fills its separator lines with 16 spaces, the evaluation
template leaves the separator lines empty and ends the prompt with 16 spaces (a train/test mismatch we keep for
comparability, since published numbers depend on it). `alpaca` is the same layout without the stray whitespace,
used for both sides. `chat` uses the tokenizer's own chat template.
"""
from __future__ import annotations

from typing import Any, Literal

from llm_adapters.errors import UserError

TemplateName = Literal["original", "alpaca", "chat"]
TEMPLATES: tuple[str, ...] = ("original", "alpaca", "chat")

_HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
_HEADER_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
_PAD = " " * 16  # the original's indentation, from an indented triple-quoted f-string


def _original_train(instruction: str, input: str) -> str:
    if input:
        return (
            f"{_HEADER_INPUT} \n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n{_PAD}\n"
            f"{_PAD}### Input:\n{_PAD}{input}\n{_PAD}\n{_PAD}### Response:\n{_PAD}"
        )
    return f"{_HEADER}  \n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n{_PAD}\n{_PAD}### Response:\n{_PAD}"


def _original_eval(instruction: str, input: str) -> str:
    if input:
        return (
            f"{_HEADER_INPUT}\n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n\n"
            f"{_PAD}### Input:\n{_PAD}{input}\n\n{_PAD}### Response:\n{_PAD}"
        )
    return f"{_HEADER} \n\n{_PAD}### Instruction:\n{_PAD}{instruction}\n\n{_PAD}### Response:\n{_PAD}"


def _alpaca(instruction: str, input: str) -> str:
    if input:
        return f"{_HEADER_INPUT}\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    return f"{_HEADER}\n\n### Instruction:\n{instruction}\n\n### Response:\n"


def _chat(instruction: str, input: str, tokenizer: Any) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", None) or "this tokenizer"
        raise UserError(
            f"template 'chat' needs a tokenizer with a chat template, and {name} has none; "
            f"accepted templates: {', '.join(TEMPLATES)}"
        )
    content = f"{instruction}\n\n{input}" if input else instruction
    messages = [{"role": "user", "content": content}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def build_prompt(
    instruction: str,
    input: str = "",
    *,
    template: str = "original",
    stage: Literal["train", "eval"] = "eval",
    tokenizer: Any = None,
) -> str:
    """The prompt that precedes the response.

    Args:
        instruction: the record's instruction.
        input: the record's optional input ("" in every LLM-Adapters file).
        template: one of TEMPLATES.
        stage: "train" or "eval"; only `original` differs between the two, as the original did.
        tokenizer: needed by the `chat` template.

    Raises:
        ValueError: an unknown template, or `chat` with a tokenizer that has no chat template.

    Example:
        >>> build_prompt("What is 2+3?", template="alpaca").endswith("### Response:\\n")
        True
    """
    if template == "original":
        return _original_train(instruction, input) if stage == "train" else _original_eval(instruction, input)
    if template == "alpaca":
        return _alpaca(instruction, input)
    if template == "chat":
        return _chat(instruction, input, tokenizer)
    raise UserError(f"unknown template {template!r}; accepted templates: {', '.join(TEMPLATES)}")


def build_training_text(
    instruction: str, input: str, output: str, *, template: str = "original", tokenizer: Any = None
) -> tuple[str, str]:
    """(prompt, response) for one training example; the full text is prompt + response.

    The original's training text is its training prompt followed directly by the output; the split lets the
    trainer mask the prompt's tokens out of the loss.
    """
    prompt = build_prompt(instruction, input, template=template, stage="train", tokenizer=tokenizer)
    return prompt, output


def choice_response(label: str) -> str:
    """The response a commonsense item is trained to give, and the continuation log-likelihood scoring scores."""
    return f"the correct answer is {label}"


def adds_special_tokens(template: str) -> bool:
    """Whether the tokenizer should add its special tokens (BOS...) to a prompt: not for `chat`, whose template
    writes them into the text itself."""
    return template != "chat"


SPLITS = ("apart", "whole")  # how a (prompt, response) pair is tokenised for scoring: see `encode_pair`


def encode_pair(tokenizer: Any, prompt: str, response: str, template: str, split: str = "apart"
                ) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids).

    `apart` (training, generation and our default scoring): each tokenised on its own. Tokenising prompt +
    response as one text can merge the prompt's last characters with the response's first (the original template
    ends its prompt in 16 spaces), which moves the boundary by a token; apart, the prompt's ids are exactly those
    the model is given at generation time and was trained on.

    `whole` (lm-eval's `_encode_pair`): the prompt's trailing whitespace moves to the response, the two are
    tokenised as one text, and the response's ids are those after the prompt's. The model then scores the
    whitespace and the response as it would read them in one text, and the prompt it conditions on is not the one
    it answers at generation time.
    """
    if split == "whole":
        stripped = prompt.rstrip()
        prompt, response = stripped, prompt[len(stripped):] + response
        prompt_ids = tokenizer(prompt, add_special_tokens=adds_special_tokens(template))["input_ids"]
        whole = tokenizer(prompt + response, add_special_tokens=adds_special_tokens(template))["input_ids"]
        return list(prompt_ids), list(whole[len(prompt_ids):])
    if split != "apart":
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    prompt_ids = tokenizer(prompt, add_special_tokens=adds_special_tokens(template))["input_ids"]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return list(prompt_ids), list(response_ids)
