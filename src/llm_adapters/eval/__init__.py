"""Evaluation: `EvalConfig`, the generation engine, answer extraction, scoring, `evaluate(model, tokenizer, config)`.

Example:
    >>> from llm_adapters.eval import extract_answer
    >>> extract_answer("gsm8k", "3 + 4 = 7. The answer is 7.")
    7.0
"""
from __future__ import annotations

from .config import EvalConfig
from .evaluate import Prepared, evaluate, evaluate_tasks, prepare_tasks, results_table
from .extract import RULES, answer_complete, extract_answer, is_correct
from .decoding import DecodeConfig
from .loglik import continuation_logliks
from .stream import generate_batch, generate_stream
from .score import PredictionLog, wilson_interval

__all__ = ["RULES", "DecodeConfig", "EvalConfig", "Prepared", "PredictionLog", "answer_complete",
           "continuation_logliks", "evaluate", "evaluate_tasks", "extract_answer", "generate_batch", "generate_stream",
           "is_correct",
           "prepare_tasks", "results_table", "wilson_interval"]
