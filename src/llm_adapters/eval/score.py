"""Per-example records, accuracy with a 95 % confidence interval, and the kill-safe predictions log.

`predictions.jsonl` is append-only while a task runs: one JSON line per example, flushed and fsynced after each
batch, so a kill (even -9) loses at most the batch in flight. A re-run reads the valid lines, truncates a torn
last line, and skips the indices already done; when the task is complete the file is rewritten in index order
(atomically), so an interrupted run and an uninterrupted one end with the same file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from llm_adapters.errors import UserError
from llm_adapters.files import append_jsonl, write_jsonl_atomic

Z95 = 1.959963984540054  # the 0.975 quantile of the standard normal


def wilson_interval(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default).

    With p = correct / n:  centre = (p + z²/2n) / (1 + z²/n),
    half-width = z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/4n²). Unlike p ± z·sqrt(p(1-p)/n) it stays inside
    [0, 1] and is not empty at p = 0 or 1. n = 0 gives (0, 1). `correct` may be fractional (a study's mean
    accuracy over seeds times n).

    Example:
        >>> [round(x, 4) for x in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if n == 0:
        return 0.0, 1.0
    p, z2 = correct / n, z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_summary(records: list[dict[str, Any]], key: str = "correct") -> dict[str, Any]:
    """{accuracy, correct, n, ci95} over `records[*][key]` (accuracy and interval as fractions)."""
    n = len(records)
    correct = sum(bool(record[key]) for record in records)
    low, high = wilson_interval(correct, n)
    return {"accuracy": correct / n if n else 0.0, "correct": correct, "n": n, "ci95": [low, high]}


class PredictionLog:
    """The append-only, kill-safe `predictions.jsonl` of one task.

    Args:
        path: the file; created with its folder on the first append.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> dict[int, dict[str, Any]]:
        """The records already written, by index. A torn last line (a kill mid-write) is cut off the file.

        Raises:
            ValueError: an unreadable line that is not the last one (the file was damaged otherwise).
        """
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        records: dict[int, dict[str, Any]] = {}
        offset = 0
        lines = data.split(b"\n")
        for number, line in enumerate(lines, start=1):
            is_last = number == len(lines)
            try:
                record = json.loads(line) if line.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                if not is_last:
                    raise UserError(
                        f"{self.path}: line {number} is damaged ({error}); remove it or the file") from error
                record = None
            if is_last and line:  # a line without its newline was torn by a kill: drop it
                os.truncate(self.path, offset)
                break
            if record is not None:
                records.setdefault(int(record["index"]), record)
            offset += len(line) + 1
        return records

    def append(self, records: list[dict[str, Any]]) -> None:
        """Append records, one line each, and fsync, so that they survive a kill."""
        append_jsonl(self.path, records)

    def rewrite_sorted(self, records: dict[int, dict[str, Any]]) -> None:
        """Replace the file atomically with `records` in index order."""
        write_jsonl_atomic(self.path, (records[index] for index in sorted(records)))
