"""Provenance: package versions, git commit, machine and device, as one block written into every output folder
(fine-tuning manifest, evaluation summary, training-set builder sidecar), so that every number can be traced."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("llm-adapters", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes")


def versions() -> dict[str, str]:
    """Installed versions of Python and of the packages results depend on ("not installed" where absent)."""
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def git_commit() -> str | None:
    """HEAD of the repository this package runs from (with "-dirty" if it has uncommitted changes), or None
    (installed from a wheel, or no git)."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """Platform, CPU count and the CUDA devices (names), when torch is loaded."""
    cuda = None
    torch = sys.modules.get("torch")  # never import torch only to describe the machine
    if torch is not None and torch.cuda.is_available():
        cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "cuda": cuda}


def provenance(device: str | None = None, dtype: str | None = None) -> dict[str, Any]:
    """The block every output folder carries: versions, git commit, machine, the device and dtype used, date."""
    block: dict[str, Any] = {"versions": versions(), "git_commit": git_commit(), "machine": machine()}
    if device is not None:
        block["device"] = device
    if dtype is not None:
        block["dtype"] = dtype
    block["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return block
