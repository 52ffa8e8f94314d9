"""Decoding settings and what every decoding path shares: the protocols, `DecodeConfig`, a response
(`Generation`), prompt lengths and length-sorted batches, where a response ends and how it is decoded to text.

The engine, one idea a file: `stream.py` (greedy decoding with continuous batching and drafts, the `fast`
protocol), `hf_generate.py` (`model.generate` in batches: beam search, the `original` protocol, prompt-learning
adapters), `loglik.py` (log-likelihoods of fixed continuations), `forward.py` (how the engine runs a forward pass:
left padding, the shared header, grouped-query attention), `kvcache.py`, `packed.py`, `attention.py`.

Why the common pieces:
- Left padding: a decoder-only model continues from the last position, so every row's prompt must end in the
  same column; the pads go in front. The attention mask tells the model to ignore them (the original passed
  none, so its outputs changed with the batch size, issues #61/#64), and positions are counted from each row's
  first real token.
- Sorting by prompt length: rows of similar length waste little compute on pads.
- Stop rules (`fast` protocol): a row stops at EOS, or as soon as its answer can no longer change
  (`extract.answer_complete`).
- `original` protocol: the original's decoding (4-beam search, 256/32 new tokens, no stop rule), with the
  attention mask and eval mode that the original lacked. `use_cache=False` (the original math script's
  setting) changes only the speed, so the KV cache stays on unless asked otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from transformers.tokenization_utils_tokenizers import TokenizersBackend

from llm_adapters.data.tasks import Task
from llm_adapters.data.templates import adds_special_tokens
from llm_adapters.errors import UserError

Protocol = Literal["fast", "original"]
PROTOCOLS: tuple[str, ...] = ("fast", "original")
# Decoding settings that change the speed and never the tokens, where answers are batch-invariant
# (`batch_invariant`); elsewhere they are part of a task folder's identity.
SPEED_ONLY = ("batch_size", "draft_tokens")
DRAFT_TOKENS = 8  # the default most tokens a row drafts for one step


def batch_invariant(precision: dict[str, str]) -> bool:
    """Whether a question's answer is the same at any batch size, with drafts on or off, on `precision` (the
    device type and compute of `evaluate.precision_of`): on the CPU in fp32 only, where every rounding but the
    attention's is row-local and the attention's differs only in fp32 sums (tested on SmolLM2 for every task
    type). Not with bf16 products: their rows are row-local too, but each product rounds its input to bf16, so
    the attention's fp32 differences of 1e-7 flip roundings of 1e-2 and answers move (tests/test_invariance.py
    measures it). Nor in bf16 or fp16 throughout, nor on CUDA, where kernels pick their order of additions by
    the batch's shape and results are rounded to 16 bits (measured: `evaluate --check-invariance`)."""
    return precision.get("device") == "cpu" and precision.get("compute") == "float32"


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
            decoding, greedy with the KV cache only); 0 decodes one token a step. Where answers are
            batch-invariant (`batch_invariant`) the tokens are the same either way: only the number of steps
            changes.
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



def end_of_text_ids(model: Any, tokenizer: Any) -> set[int]:
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


def text_decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """`ids -> tokenizer.decode(ids, skip_special_tokens=True)`; for transformers' Rust-backed tokenizers with no
    clean-up, their backend's decode itself (the same text): the stop rule decodes a row at every new token,
    and the wrapper's conversion of every id to a Python int first took two thirds of that time (SmolLM2)."""
    if (type(tokenizer)._decode is TokenizersBackend._decode and type(tokenizer).decode is TokenizersBackend.decode
            and not tokenizer.clean_up_tokenization_spaces):
        backend = tokenizer.backend_tokenizer
        return lambda ids: backend.decode(ids, skip_special_tokens=True)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def finish(tokenizer: Any, tokens: list[int], length: int, ends: set[int]) -> Generation:
    """Cut a row at `length` or just after its first end-of-text token, whichever comes first, and decode it."""
    length = next((i + 1 for i, token in enumerate(tokens[:length]) if token in ends), length)
    return Generation(tokenizer.decode(tokens[:length], skip_special_tokens=True), length)


