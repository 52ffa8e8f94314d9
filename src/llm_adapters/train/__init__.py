"""Fine-tuning: `FinetuneConfig` (config.py) -> `finetune` (run.py: setup, train, save), with the batches
(batches.py) and the Trainer (trainer.py) it uses.

Example:
    >>> from llm_adapters.train import finetune, load_config
    >>> finetune(load_config("configs/demo.yaml", max_steps=10))  # doctest: +SKIP
"""
from __future__ import annotations

from llm_adapters.train.config import FinetuneConfig, load_config
from llm_adapters.train.run import finetune

__all__ = ["FinetuneConfig", "finetune", "load_config"]
