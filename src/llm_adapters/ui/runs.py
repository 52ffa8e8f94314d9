"""Fine-tune runs as the Runs tab shows them, read from their folders: manifest.json (settings, parameters,
training), loss_log.jsonl (the loss per step) and loss_curve.png. Plain data, no Gradio."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_DEPTH = 4  # how deep below the given folder runs are looked for (DIR/runs/<name>/adapter of a study is 3)


def find_runs(roots: list[str | Path]) -> list[Path]:
    """Finished fine-tune run folders (manifest.json beside adapter_config.json) under `roots`."""
    found: set[Path] = set()
    for root in map(Path, roots):
        for depth in range(_DEPTH + 1):
            for manifest in root.glob("/".join(["*"] * depth + ["manifest.json"])):
                if (manifest.parent / "adapter_config.json").is_file():
                    found.add(manifest.parent)
    return sorted(found)


def label(run: Path) -> str:
    """A study run's adapter/ is named by its run folder."""
    return str(run.parent if run.name == "adapter" else run)


def manifest(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def summary(run: Path) -> list[Any]:
    """One row of the runs table: run, method, base model, steps, last loss, mean loss, trainable %."""
    record = manifest(run)
    training, parameters = record.get("training", {}), record.get("parameters", {})
    loss = [training.get("last_loss"), training.get("mean_loss")]
    return [label(run), record.get("spec", {}).get("method"), record.get("config", {}).get("base_model"),
            training.get("steps"), *[None if x is None else round(x, 4) for x in loss],
            None if parameters.get("percent") is None else round(parameters["percent"], 4)]


SUMMARY_HEADER = ["run", "method", "base model", "steps", "last loss", "mean loss", "trainable %"]


def loss_curve(run: Path) -> Path | None:
    """The run's loss_curve.png (every finished run draws one from its loss_log.jsonl), or None."""
    path = run / "loss_curve.png"
    return path if path.is_file() else None


def settings(run: Path) -> dict[str, Any]:
    """The run's resolved settings and adapter spec."""
    record = manifest(run)
    return {"config": record.get("config", {}), "spec": record.get("spec", {}),
            "target_modules": record.get("target_modules", [])}
