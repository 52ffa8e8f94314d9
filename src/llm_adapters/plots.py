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


def study_figures(summary: dict[str, Any], out: str | Path) -> list[Path]:
    """A study report's plots, where the grid has what they show: accuracy per placement and method (RQ1),
    accuracy against each numeric hyper-parameter (RQ2), in- vs out-of-distribution tasks (RQ3, where the summary
    has them), accuracy against trainable-parameter %. Error bars are the report's 95 % intervals; the base model
    is a labelled horizontal line. `summary` is `study.report.table(...)`. Returns the files written."""
    out = Path(out)
    rows = {key: row for key, row in summary["rows"].items() if not row["baseline"]}
    bases = [row for row in summary["rows"].values() if row["baseline"]]
    axes = {axis for row in rows.values() for axis in row["values"]}
    drawn = []
    if not rows:
        return drawn
    if "placement" in axes:
        drawn.append(_placement_bars(rows, bases, out / "rq1-placement.png"))
    for axis in sorted(axes - {"method", "placement", "seed"}):
        if all(isinstance(row["values"].get(axis), (int, float)) for row in rows.values() if axis in row["values"]):
            drawn.append(_hyperparameter_lines(rows, bases, axis, out / f"rq2-{axis}.png"))
    if summary.get("in_distribution"):
        drawn.append(_id_ood_bars(summary["rows"], out / "rq3-id-ood.png"))
    drawn.append(_params_scatter(rows, bases, out / "accuracy-vs-params.png"))
    return drawn


AVERAGE_LABEL = "average accuracy (%), 95 % interval"


def _interval(stat: dict[str, Any] | None) -> tuple[float, float, float]:
    """(mean, below, above) in %: the error bar of a cell's 95 % interval."""
    if stat is None:
        return float("nan"), 0.0, 0.0
    mean = 100 * stat["mean"]
    return mean, mean - 100 * stat["ci95"][0], 100 * stat["ci95"][1] - mean


def _base_lines(axis: Any, bases: list[dict[str, Any]], column: str = "average", label: str = "") -> None:
    """Each base model row as a dashed horizontal line, labelled in the legend."""
    for base in bases:
        stat = base["cells"].get(column) if column in base["cells"] else base.get("groups", {}).get(column)
        if stat is not None:
            name = "base model" + (f" ({base['study']})" if len(bases) > 1 else "") + label
            axis.axhline(100 * stat["mean"], color="#555555", linestyle="--", linewidth=1,
                         label=f"{name}: {100 * stat['mean']:.1f} %")


def _group_label(row: dict[str, Any]) -> str:
    """A bar group of the placement plot: the method and the grid's other values (all but placement and seed), so
    that no configuration is left out when the grid has more axes."""
    others = [f"{axis}={value}" for axis, value in row["values"].items() if axis not in ("method", "placement", "seed")]
    return "\n".join([row["method"], *others])


def _placement_bars(rows: dict[str, Any], bases: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    groups = list(dict.fromkeys(_group_label(row) for row in rows.values()))
    placements = list(dict.fromkeys(str(row["values"].get("placement", "none")) for row in rows.values()))
    width = 0.8 / max(1, len(placements))
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4.8))
    for k, placement in enumerate(placements):
        xs, ys, below, above = [], [], [], []
        for m, group in enumerate(groups):
            match = [r for r in rows.values()
                     if _group_label(r) == group and str(r["values"].get("placement", "none")) == placement]
            if match:  # one row at most: the group and the placement are every grid value but the seed
                mean, low, high = _interval(match[0]["cells"]["average"])
                xs.append(m + (k - (len(placements) - 1) / 2) * width)
                ys.append(mean)
                below.append(low)
                above.append(high)
        axis.bar(xs, ys, width, yerr=[below, above], capsize=4, label=f"placement {placement}")
    _base_lines(axis, bases)
    axis.set_xticks(range(len(groups)), groups, fontsize=8)
    axis.set_xlabel("method (and the grid's other values)")
    axis.set_ylabel(AVERAGE_LABEL)
    axis.set_title("accuracy by placement (RQ1)")
    axis.legend(fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    return _save(plt, figure, path)


def _hyperparameter_lines(rows: dict[str, Any], bases: list[dict[str, Any]], name: str, path: Path) -> Path:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    methods = list(dict.fromkeys(row["method"] for row in rows.values()))
    values = [row["values"][name] for row in rows.values() if name in row["values"]]
    # values spanning a decade or more (learning rates) on a log axis, where 3e-4 and 1e-3 stand apart
    logarithmic = min(values) > 0 and max(values) >= 10 * min(values)
    # Methods side by side at each value (a small shift), so equal points and their bars stay apart.
    shift = 0.012 * ((max(values) - min(values)) or 1)
    for i, method in enumerate(methods):
        points = sorted((row["values"][name], *_interval(row["cells"]["average"]))
                        for row in rows.values() if row["method"] == method and name in row["values"])
        if points:
            xs, ys, below, above = zip(*points)
            offset = (i - (len(methods) - 1) / 2)
            xs = [x * 1.06 ** offset if logarithmic else x + offset * shift for x in xs]
            axis.errorbar(xs, ys, yerr=[below, above], marker=_MARKERS[i % len(_MARKERS)], capsize=4, label=method)
    _base_lines(axis, bases)
    if logarithmic:
        axis.set_xscale("log")
    axis.set_xlabel(name + (" (log scale)" if logarithmic else ""))
    axis.set_ylabel(AVERAGE_LABEL)
    axis.set_title(f"accuracy against {name} (RQ2)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save(plt, figure, path)


def _id_ood_bars(all_rows: dict[str, Any], path: Path) -> Path:
    plt = _pyplot()
    rows = {key: row for key, row in all_rows.items() if not row["baseline"]}
    bases = [row for row in all_rows.values() if row["baseline"]]
    keys = list(rows)
    figure, axis = plt.subplots(figsize=(max(6, 0.9 * len(keys) + 2), 5))
    for k, group in enumerate(("in-distribution", "out-of-distribution")):
        points = [_interval(rows[key]["groups"][group]) for key in keys]
        axis.bar([i + (k - 0.5) * 0.4 for i in range(len(keys))], [p[0] for p in points], 0.4,
                 yerr=[[p[1] for p in points], [p[2] for p in points]], capsize=3, label=group)
    for group, style in (("in-distribution", "--"), ("out-of-distribution", ":")):
        for base in bases:
            stat = base["groups"][group]
            if stat is not None:
                axis.axhline(100 * stat["mean"], color="#555555", linestyle=style, linewidth=1,
                             label=f"base model, {group}: {100 * stat['mean']:.1f} %")
    axis.set_xticks(range(len(keys)), keys, rotation=35, ha="right", fontsize=7)
    axis.set_xlabel("configuration")
    axis.set_ylabel("mean accuracy over the tasks (%), 95 % interval")
    axis.set_title("in- vs out-of-distribution tasks (RQ3)")
    axis.legend(fontsize=7)
    axis.grid(axis="y", alpha=0.3)
    return _save(plt, figure, path)


_MARKERS = "osD^vP*Xph<>"


def _params_scatter(rows: dict[str, Any], bases: list[dict[str, Any]], path: Path) -> Path:
    """Colour by method, marker by placement, both named in the legend (no labels beside the points, so none
    overlap)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    methods = list(dict.fromkeys(row["method"] for row in rows.values()))
    placements = list(dict.fromkeys(str(row["values"].get("placement", row.get("placement"))) for row in rows.values()))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    markers = {placement: _MARKERS[i % len(_MARKERS)] for i, placement in enumerate(placements)}
    for row in rows.values():
        placement = str(row["values"].get("placement", row.get("placement")))
        mean, below, above = _interval(row["cells"]["average"])
        axis.errorbar([row["percent"]], [mean], yerr=[[below], [above]], fmt=markers[placement],
                      color=colours[row["method"]], capsize=3, alpha=0.85)
    _base_lines(axis, bases)
    handles = [plt.Line2D([], [], color=colours[m], marker="o", linestyle="", label=m) for m in methods]
    if len(placements) > 1:
        handles += [plt.Line2D([], [], color="#333333", marker=markers[p], linestyle="", label=f"placement {p}")
                    for p in placements]
    axis.legend(handles=handles + axis.get_legend_handles_labels()[0], fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (% of base + adapter, log scale)")
    axis.set_ylabel(AVERAGE_LABEL)
    axis.set_title("accuracy against adapter size")
    axis.grid(alpha=0.3)
    return _save(plt, figure, path)


def _save(plt: Any, figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
