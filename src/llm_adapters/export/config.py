"""`ExportConfig`: every setting of `llm-adapters export`, validated when built (its flags are its fields)."""
from __future__ import annotations

from dataclasses import dataclass, field

from llm_adapters.errors import UserError

FORMATS = ("hf", "gguf", "gguf-lora")
# Names accepted by --dtype -> the torch dtype name; f32/f16/bf16 are GGUF's own spellings.
DTYPES = {"float32": "float32", "fp32": "float32", "f32": "float32", "float16": "float16", "fp16": "float16",
          "f16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class ExportConfig:
    """What to export, from which adapter and base, in which format and dtype, to which folder."""

    adapter: str = field(metadata={
        "help": "an adapter folder (adapter_config.json + weights), a fine-tune run folder, or a study run folder "
                "(its adapter/)"})
    out: str = field(metadata={"help": "the output folder (created; an earlier export there needs --overwrite)"})
    base_model: str | None = field(default=None, metadata={
        "help": "the base model (default: the one the adapter was trained on, from its manifest.json, else "
                "adapter_config.json's base_model_name_or_path)"})
    format: str = field(default="hf", metadata={
        "help": "hf: the adapter merged into the base, a transformers folder; gguf: the merged model as "
                "model.gguf for llama.cpp / Ollama (LLaMA-family bases); gguf-lora: a LoRA-family adapter as "
                "adapter.gguf for llama.cpp's --lora"})
    dtype: str | None = field(default=None, metadata={
        "help": "float32, float16 or bfloat16 (also f32, f16, bf16) of the written weights (default: the base's "
                "own, fp32 for the embedded model)"})
    as_lora: int | None = field(default=None, metadata={
        "help": "gguf-lora only: first convert a non-LoRA tuner that PEFT can convert (peft:vera, peft:loha, "
                "peft:lokr, ...) into a LoRA of this rank (PEFT's convert_to_lora, an approximation: its error on "
                "probe prompts is printed)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier export in --out"})
    allow_base_mismatch: bool = field(default=False, metadata={
        "help": "export onto another base model than the one the adapter was trained on"})
    trust_remote_code: bool = field(default=False, metadata={"help": "let the checkpoint run its own Python code"})

    def __post_init__(self) -> None:
        problems = []
        if self.format not in FORMATS:
            problems.append(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.dtype is not None and self.dtype not in DTYPES:
            problems.append(f"dtype {self.dtype!r} is not one of float32, float16, bfloat16 (or f32, f16, bf16)")
        if self.as_lora is not None:
            if not isinstance(self.as_lora, int) or isinstance(self.as_lora, bool) or self.as_lora < 1:
                problems.append(f"as_lora must be a positive integer (the LoRA rank), got {self.as_lora!r}")
            elif self.format != "gguf-lora":
                problems.append(f"--as-lora applies to --format gguf-lora; --format {self.format} merges the "
                                "adapter exactly, with no conversion")
        if problems:
            raise UserError("; ".join(problems))
