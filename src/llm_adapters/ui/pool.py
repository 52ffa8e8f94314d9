"""The Compare tab's models: the base and each adapter, loaded on first use (a page that is only read loads
nothing) and kept; every question goes to each of them through `compare.answer`, the engine's greedy decoding.
Plain data, no Gradio."""
from __future__ import annotations

import copy
import threading
from typing import Any

from llm_adapters.compare import BASE, answer, templates_for


class ModelPool:
    """The base model and its adapters, each loaded once, on first use.

    Args:
        base_model: the base (a name, folder, .gguf file or hub id).
        adapters: adapter, fine-tune run or study run folders.
        device: where the models go (`auto`: CUDA if present).
    """

    def __init__(self, base_model: str | None, adapters: tuple[str, ...] = (), device: str = "auto") -> None:
        self.base_model, self.adapters, self.device = base_model, tuple(adapters), device
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._lock = threading.Lock()  # Gradio answers events in threads: one load and one forward at a time

    @property
    def labels(self) -> list[str]:
        return [BASE, *self.adapters] if self.base_model else []

    @property
    def loaded(self) -> list[str]:
        return list(self._loaded)

    def _get(self, label: str) -> tuple[Any, Any]:
        from llm_adapters.methods import adapter_folder, load_adapter
        from llm_adapters.models import load_model

        if BASE not in self._loaded:
            model, tokenizer = load_model(self.base_model, device=self.device)
            self._loaded[BASE] = (model.eval(), tokenizer)
        if label not in self._loaded:
            base, tokenizer = self._loaded[BASE]
            self._loaded[label] = (load_adapter(copy.deepcopy(base), adapter_folder(label),
                                                base_model=self.base_model), tokenizer)
        return self._loaded[label]

    def ask(self, instruction: str, input: str = "", task: str | None = None, gold: str | None = None,
            template: str | None = None, max_new_tokens: int | None = None) -> list[dict[str, Any]]:
        """Every model's answer to one question: {model, template, prompt, generation, n_tokens} and, with a task,
        the extracted `answer` (and `correct` when the gold answer is known)."""
        record = {"instruction": instruction, "input": input or ""}
        if gold is not None:
            record["answer"] = gold
        templates = templates_for(template, self.adapters)
        rows = []
        with self._lock:
            for label in self.labels:
                model, tokenizer = self._get(label)
                row = answer(model, tokenizer, [record], templates[label], task, max_new_tokens)[0]
                rows.append({"model": label, "template": templates[label], **row})
        return rows
