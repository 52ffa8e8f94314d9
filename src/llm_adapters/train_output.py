"""The run folder of `finetune`: start, resume or refuse; the manifest, the loss log and curve; atomic writes.

States of an output folder:
- absent or empty: a fresh run;
- `run.json` and no `manifest.json`: a run that was started (perhaps killed). With the same settings it resumes
  from its last complete checkpoint; different settings are an error naming each key (RESUME_MAY_CHANGE lists
  those that may change, and the new value wins);
- `manifest.json`: a finished run; anything else: foreign files. Both are errors unless `overwrite`.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_adapters.data.io import write_json_atomic
from llm_adapters.train_config import RESUME_MAY_CHANGE, FinetuneConfig

RUN_FILE, MANIFEST_FILE, CHECKPOINTS = "run.json", "manifest.json", "checkpoints"


@dataclass(frozen=True)
class OutputPlan:
    """What to do with the output folder: start fresh, resume from `checkpoint`, or replace its content."""

    action: str  # fresh, resume, replace
    checkpoint: Path | None = None
    changed: tuple[str, ...] = ()  # RESUME_MAY_CHANGE settings that differ from the saved run: "key: old -> new"


def plan_output_dir(out: Path, config: FinetuneConfig, data_sha256: str | None) -> OutputPlan:
    """Decide, without writing anything, how a run uses `out`.

    Raises:
        FileExistsError: `out` holds a finished run or foreign files, and overwrite is off.
        ValueError: `out` holds an unfinished run with different settings (each key named), and overwrite is off.
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return OutputPlan("fresh")
    if not out.is_dir():
        raise FileExistsError(f"output_dir {out} is a file")
    if config.overwrite:
        return OutputPlan("replace")
    if (out / MANIFEST_FILE).exists():
        raise FileExistsError(f"output_dir {out} holds a finished run ({MANIFEST_FILE}); choose another "
                              "output_dir or pass --overwrite to replace it")
    if not (out / RUN_FILE).exists():
        names = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise FileExistsError(f"output_dir {out} is not empty and holds no run of ours ({names}); choose another "
                              "output_dir or pass --overwrite to delete its content")
    saved = json.loads((out / RUN_FILE).read_text(encoding="utf-8"))
    differences = [f"{key}: {saved['config'].get(key)!r} -> {value!r}" for key, value in config.to_dict().items()
                   if key not in RESUME_MAY_CHANGE and saved["config"].get(key) != value]
    if saved.get("data_sha256") != data_sha256:
        differences.append(f"data content (sha256 {str(saved.get('data_sha256'))[:12]} -> {str(data_sha256)[:12]})")
    if differences:
        raise ValueError(f"output_dir {out} holds an unfinished run with other settings, so it cannot resume: "
                         f"{'; '.join(differences)}. Rerun with the saved settings to resume, or pass "
                         "--overwrite to start over")
    changed = tuple(f"{key}: {saved['config'].get(key)!r} -> {getattr(config, key)!r}" for key in RESUME_MAY_CHANGE
                    if key in saved["config"] and saved["config"][key] != getattr(config, key))
    return OutputPlan("resume", latest_checkpoint(out / CHECKPOINTS), changed)


def begin_run(out: Path, plan: OutputPlan, config: FinetuneConfig, data_sha256: str | None) -> None:
    """Apply the plan: clear a replaced folder, then record the settings (`run.json`) that a resume must match."""
    if plan.action == "replace":
        _remove_run_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    if plan.action == "resume" and plan.checkpoint is None:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # killed before its first complete checkpoint
    write_json_atomic(out / RUN_FILE, {"config": config.to_dict(), "data_sha256": data_sha256})


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete Trainer checkpoint: the Trainer writes trainer_state.json last, so a checkpoint cut
    short by a kill lacks it (or holds it truncated) and is skipped."""
    if not folder.is_dir():
        return None
    steps = sorted((int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*")
                   if p.name.split("-")[1].isdigit())
    for _, path in reversed(steps):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
            return path
        except (OSError, ValueError):
            continue
    return None


def finish_output_dir(out: Path, keep_checkpoints: bool) -> None:
    """After the manifest is written: drop run.json and (unless kept) the checkpoints."""
    (out / RUN_FILE).unlink(missing_ok=True)
    if not keep_checkpoints:
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def _remove_run_dir(out: Path) -> None:
    """Delete `out` for --overwrite, refusing folders whose loss would be a disaster rather than a rerun."""
    resolved, cwd, home = out.resolve(), Path.cwd().resolve(), Path.home().resolve()
    if resolved in (cwd, home) or resolved in cwd.parents or (resolved / ".git").exists():
        raise ValueError(f"refusing to delete {resolved} for --overwrite (the working directory, one of its "
                         "parents, the home folder or a git repository); choose a dedicated output_dir")
    shutil.rmtree(resolved)


def write_loss_log(out: Path, log_history: list[dict[str, Any]]) -> None:
    """`loss_log.jsonl` (one Trainer log entry per line) and `loss_curve.png` (training and validation loss)."""
    lines = "".join(json.dumps(entry) + "\n" for entry in log_history)
    temporary = out / ".loss_log.jsonl.tmp"
    temporary.write_text(lines, encoding="utf-8")
    os.replace(temporary, out / "loss_log.jsonl")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    figure.savefig(out / "loss_curve.png", dpi=100)
    plt.close(figure)


def write_manifest(out: Path, run: dict[str, Any]) -> None:
    """`manifest.json`: the run's record plus package versions, git commit and machine; written last, atomically."""
    import accelerate
    import peft
    import torch
    import transformers

    import llm_adapters

    manifest = {
        **run,
        "versions": {"llm_adapters": llm_adapters.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                     "accelerate": accelerate.__version__},
        "git_commit": git_commit(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)


def git_commit() -> str | None:
    """HEAD of the repository this package runs from, or None (installed from a wheel, or no git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None
