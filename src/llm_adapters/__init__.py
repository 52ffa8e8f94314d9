"""llm-adapters: the LLM-Adapters family of adapters on any Hugging Face causal LM, PEFT-native."""
from __future__ import annotations

__version__ = "0.1.0"
