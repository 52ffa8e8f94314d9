"""Every figure: the training loss curve, the demo's before/after bars. PNG, readable at a glance."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def loss_curve(log_history: list[dict[str, Any]], path: str | Path) -> None:
    """Training (and validation) loss per optimiser step, from the Trainer's log entries."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "training"), ("eval_loss", "validation")):
        points = [(e["step"], e[key]) for e in log_history if key in e]
        if points:
            axes.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=label)
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("loss per label token")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def before_after(labels: tuple[str, str], summaries: tuple[dict[str, Any], dict[str, Any]], title: str,
                 path: str | Path) -> None:
    """Two accuracy bars (base, fine-tuned) with their 95 % intervals."""
    plt = _pyplot()
    values = [100 * s["accuracy"] for s in summaries]
    errors = [[v - 100 * s["ci95"][0] for v, s in zip(values, summaries)],
              [100 * s["ci95"][1] - v for v, s in zip(values, summaries)]]
    figure, axis = plt.subplots(figsize=(4, 3.5))
    axis.bar(list(labels), values, yerr=errors, capsize=6, color=["#999999", "#2a7ab9"])
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
