"""Ship an adapter: merged into its base as a transformers folder or a GGUF file, or as a GGUF LoRA file
(`llm-adapters export`).

Example:
    >>> from llm_adapters.export import ExportConfig, export_adapter
    >>> export_adapter(ExportConfig(adapter="runs/demo", out="runs/demo-merged"))  # doctest: +SKIP
"""
from __future__ import annotations

from .config import FORMATS, ExportConfig
from .export import export_adapter

__all__ = ["FORMATS", "ExportConfig", "export_adapter"]
