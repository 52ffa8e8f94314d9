"""Every figure: the training loss curve, the demo's before/after bars, a study's plots. PNG, readable at a
glance: labelled axes, error bars, a legend."""
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


def study_figures(summary: dict[str, Any], out: str | Path, in_distribution: list[str] | None = None) -> list[Path]:
    """A study report's plots, where the grid has what they show: accuracy per placement and method (RQ1),
    accuracy against each numeric hyper-parameter (RQ2), in- vs out-of-distribution tasks (RQ3), accuracy
    against trainable-parameter %. `summary` is `study.report.table(...)`. Returns the files written."""
    out = Path(out)
    rows = summary["rows"]
    axes = {axis for row in rows.values() for axis in row["values"]}
    drawn = []
    if "placement" in axes:
        drawn.append(_placement_bars(rows, out / "rq1-placement.png"))
    for axis in sorted(axes - {"method", "placement"}):
        if all(isinstance(row["values"].get(axis), (int, float)) for row in rows.values() if axis in row["values"]):
            drawn.append(_hyperparameter_lines(rows, axis, out / f"rq2-{axis}.png"))
    if in_distribution:
        drawn.append(_id_ood_bars(rows, summary["tasks"], set(in_distribution), out / "rq3-id-ood.png"))
    drawn.append(_params_scatter(rows, out / "accuracy-vs-params.png"))
    return drawn


def _error(stat: dict[str, Any]) -> float:
    return 100 * stat["sd"] if stat.get("sd") is not None else 0.0


def _placement_bars(rows: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    methods = list(dict.fromkeys(row["method"] for row in rows.values()))
    placements = list(dict.fromkeys(str(row["values"].get("placement")) for row in rows.values()))
    width = 0.8 / max(1, len(placements))
    figure, axis = plt.subplots(figsize=(max(5, 1.8 * len(methods)), 4))
    for k, placement in enumerate(placements):
        xs, ys, errors = [], [], []
        for m, method in enumerate(methods):
            match = [r for r in rows.values()
                     if r["method"] == method and str(r["values"].get("placement")) == placement]
            if match:
                xs.append(m + (k - (len(placements) - 1) / 2) * width)
                ys.append(100 * match[0]["cells"]["average"]["mean"])
                errors.append(_error(match[0]["cells"]["average"]))
        axis.bar(xs, ys, width, yerr=errors, capsize=4, label=placement)
    axis.set_xticks(range(len(methods)), methods)
    axis.set_ylabel("average accuracy (%), ± sd over seeds")
    axis.set_title("accuracy by placement (RQ1)")
    axis.legend(title="placement")
    axis.grid(axis="y", alpha=0.3)
    return _save(plt, figure, path)


def _hyperparameter_lines(rows: dict[str, Any], name: str, path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(row["method"] for row in rows.values()):
        points = sorted((row["values"][name], 100 * row["cells"]["average"]["mean"], _error(row["cells"]["average"]))
                        for row in rows.values() if row["method"] == method and name in row["values"])
        if points:
            xs, ys, errors = zip(*points)
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=4, label=method)
    axis.set_xlabel(name)
    axis.set_ylabel("average accuracy (%), ± sd over seeds")
    axis.set_title(f"accuracy against {name} (RQ2)")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(plt, figure, path)


def _id_ood_bars(rows: dict[str, Any], tasks: list[str], in_distribution: set[str], path: Path) -> Path:
    plt = _pyplot()
    keys = list(rows)
    figure, axis = plt.subplots(figsize=(max(5, 1.2 * len(keys)), 4))
    for k, (label, members) in enumerate((("in-distribution", [t for t in tasks if t in in_distribution]),
                                          ("out-of-distribution", [t for t in tasks if t not in in_distribution]))):
        values = [100 * sum(rows[key]["cells"][t]["mean"] for t in members if t in rows[key]["cells"])
                  / max(1, sum(t in rows[key]["cells"] for t in members)) for key in keys]
        axis.bar([i + (k - 0.5) * 0.4 for i in range(len(keys))], values, 0.4, label=f"{label} ({', '.join(members)})")
    axis.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    axis.set_ylabel("mean accuracy over the tasks (%)")
    axis.set_title("in- vs out-of-distribution (RQ3)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _save(plt, figure, path)


def _params_scatter(rows: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(row["method"] for row in rows.values()):
        points = [(row["percent"], 100 * row["cells"]["average"]["mean"], _error(row["cells"]["average"]))
                  for row in rows.values() if row["method"] == method]
        xs, ys, errors = zip(*points)
        axis.errorbar(xs, ys, yerr=errors, fmt="o", capsize=4, label=method)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (% of base + adapter, log scale)")
    axis.set_ylabel("average accuracy (%), ± sd over seeds")
    axis.set_title("accuracy against adapter size")
    axis.legend()
    axis.grid(alpha=0.3)
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
