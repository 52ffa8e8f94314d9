"""`EvalConfig`: every setting of an evaluation, validated when built (YAML keys and `llm-adapters evaluate` flags
are its fields). The model is not part of `eval/`: the caller loads it (`models.load_model`, `methods.load_adapter`)
and passes it with this config; `base_model` and `adapter` name it, for the records and the folder's identity."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_adapters.data.templates import SPLITS, TEMPLATES
from llm_adapters.errors import UserError
from llm_adapters.eval.extract import RULES
from llm_adapters.eval.decoding import DRAFT_TOKENS, PROTOCOLS

SCORINGS = ("generate", "loglik", "both")
DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class EvalConfig:
    """How to evaluate: which tasks, how to prompt, decode, extract and score, and where the results go."""

    base_model: str | None = field(default=None, metadata={
        "help": "built-in name (smollm2-135m, tiny-llama...), local folder, .gguf file or hub id"})
    adapter: str | None = field(default=None, metadata={
        "help": "a saved adapter folder (PEFT format); none: the base model alone"})
    tasks: tuple[str, ...] = field(default=("all",), metadata={
        "help": "tasks or groups: gsm8k,boolq / math / commonsense / all"})
    data_dir: str | None = field(default=None, metadata={
        "help": "benchmark files (default: $LLM_ADAPTERS_DATA, else ~/.cache/llm-adapters/data)"})
    output_dir: str | None = field(default=None, metadata={
        "help": "results folder (default: runs/eval/<model>[-<adapter>])"})
    limit: int | None = field(default=None, metadata={
        "help": "evaluate the first N examples of each task (default: all)"})
    batch_size: int | None = field(default=None, metadata={
        "help": "prompts decoding together (greedy: continuous batching's slots; beam search: prompts per generate "
                "call); default 32 fast, 1 original"})
    draft_tokens: int = field(default=DRAFT_TOKENS, metadata={
        "help": "greedy decoding: the most tokens a prompt drafts from its own text (question and answer so far) for "
                "one step to verify (prompt-lookup decoding); where answers are batch-invariant (fp32 on the CPU) they "
                "are those of one token a step, elsewhere drafts are part of the folder's identity; 0 decodes one "
                "token a step"})
    template: str | None = field(default=None, metadata={
        "help": "prompt template: original (the original evaluation prompt, byte for byte), alpaca, chat (default: the "
                "template the adapter was trained with, from its manifest.json; else original)"})
    protocol: str = field(default="fast", metadata={
        "help": "fast: greedy + stop rules; original: the original's 4-beam search, no stop rule"})
    scoring: str = field(default="generate", metadata={
        "help": "generate; loglik: the most likely label (commonsense tasks); both"})
    loglik_split: str = field(default="apart", metadata={
        "help": "log-likelihood scoring: apart (the prompt and 'the correct answer is <label>' tokenised apart, as "
                "training and generation see them) or whole (lm-eval's: one text, the prompt's trailing whitespace "
                "moved to the continuation)"})
    rules: str = field(default="default", metadata={
        "help": "answer extraction: default (fixed rules), or original (the original's exactly, on the full "
                "generation: no stop rule)"})
    max_new_tokens: int | None = field(default=None, metadata={"help": "generation budget (default: the task's, 256 "
                                                                       "math / 32 commonsense)"})
    check_invariance: int = field(default=0, metadata={
        "help": "answer the first N questions of each task again one at a time without drafts and record how many "
                "answers equal the batched ones (summary.json, results.md); 0: no check"})
    skip_missing: bool = field(default=False, metadata={"help": "evaluate the tasks whose data is present"})
    overwrite: bool = field(default=False, metadata={
        "help": "discard results of another model or other settings found in output_dir"})
    progress: bool = field(default=True, metadata={"help": "progress bars (--no-progress: one line per task)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present, else CPU), cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={
        "help": "auto (bf16 on a GPU that has it, else fp32), float32, bfloat16 (on a CPU with bf16 units: bf16 "
                "products, fp32 activations), float16"})
    allow_base_mismatch: bool = field(default=False, metadata={
        "help": "evaluate an adapter on another base model than the one it was trained on"})
    trust_remote_code: bool = field(default=False, metadata={"help": "let the checkpoint run its own Python code"})
    dist_timeout: int = field(default=4 * 3600, metadata={
        "help": "seconds a process waits for the others under several processes before it fails (torch's default "
                "is 10 minutes with NCCL); a sharded evaluation meets only at its start and its end, where the main process "
                "waits for the others' shares as long as they keep answering, and this long after their last answer"})

    def __post_init__(self) -> None:
        if isinstance(self.tasks, str):
            object.__setattr__(self, "tasks", tuple(t.strip() for t in self.tasks.split(",") if t.strip()))
        problems = list(_problems(self))
        if problems:
            raise UserError("; ".join(problems))

    def default_output_dir(self) -> Path:
        """runs/eval/<model>[-<adapter>] (each as its last path part, filesystem-safe)."""
        import re

        def slug(text: str) -> str:
            return re.sub(r"[^A-Za-z0-9._-]+", "-", Path(text.rstrip("/")).name).strip("-") or "model"

        return Path("runs") / "eval" / "-".join(slug(x) for x in (self.base_model or "model", self.adapter) if x)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["tasks"] = list(self.tasks)
        return data


def _problems(c: EvalConfig):
    from llm_adapters.data.tasks import resolve_tasks

    try:
        resolve_tasks(list(c.tasks))
    except UserError as error:
        yield str(error)
    for name, choices in (("protocol", PROTOCOLS), ("scoring", SCORINGS), ("rules", RULES), ("loglik_split", SPLITS)):
        if getattr(c, name) not in choices:
            yield f"{name} {getattr(c, name)!r} is not one of {', '.join(choices)}"
    if c.template is not None and c.template not in TEMPLATES:
        yield f"template {c.template!r} is not one of {', '.join(TEMPLATES)}"
    for name in ("limit", "batch_size", "max_new_tokens", "dist_timeout"):
        value = getattr(c, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            yield f"{name} must be a positive integer, got {value!r}"
    if not isinstance(c.check_invariance, int) or isinstance(c.check_invariance, bool) or c.check_invariance < 0:
        yield f"check_invariance must be an integer >= 0, got {c.check_invariance!r}"
    if not isinstance(c.draft_tokens, int) or isinstance(c.draft_tokens, bool) or c.draft_tokens < 0:
        yield f"draft_tokens must be an integer >= 0, got {c.draft_tokens!r}"
    if c.dtype not in DTYPES:
        yield f"dtype {c.dtype!r} is not one of {', '.join(DTYPES)}"
