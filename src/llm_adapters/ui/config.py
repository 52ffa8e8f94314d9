"""`UiConfig`: every setting of `llm-adapters ui` (its flags are its fields). Importing it needs no Gradio."""
from __future__ import annotations

from dataclasses import dataclass, field

from llm_adapters.errors import UserError


@dataclass(frozen=True)
class UiConfig:
    """Where the app listens and what it shows."""

    host: str = field(default="127.0.0.1", metadata={
        "help": "address to listen on (127.0.0.1: this machine only; 0.0.0.0 opens it to the network)"})
    port: int = field(default=7860, metadata={"help": "port to listen on"})
    base_model: str | None = field(default=None, metadata={
        "help": "the base model of the Compare tab (built-in name, local folder, .gguf file or hub id; loaded on "
                "the first question)"})
    adapter: tuple[str, ...] = field(default=(), metadata={
        "help": "adapters answering beside the base in the Compare tab (adapter, fine-tune run or study run folders)"})
    study: tuple[str, ...] = field(default=(), metadata={
        "help": "study folders for the Study tab (their report/ from `llm-adapters study report`, and their runs)"})
    runs: str | None = field(default=None, metadata={
        "help": "a folder searched for fine-tune runs for the Runs tab (default: the studies' runs)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "benchmark files for picking a question by task and index (default: $LLM_ADAPTERS_DATA, else "
                "~/.cache/llm-adapters/data)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present, else CPU), cpu, cuda, cuda:N"})

    def __post_init__(self) -> None:
        for name in ("adapter", "study"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, tuple(x for x in getattr(self, name).split(",") if x))
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 0 < self.port < 65536:
            raise UserError(f"port must be an integer in 1..65535, got {self.port!r}")
