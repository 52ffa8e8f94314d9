"""Several processes (torchrun, `accelerate launch`): who this process is, and the few points where they meet.

The launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK) says who is who; the process group (gloo on the CPU,
NCCL on GPUs) is set up at the first barrier, in the way the Trainer then reuses. The rule of the house: only
the main process plans a folder, deletes, writes and prints; the others wait at a barrier. Without a launcher
everything here is the single-process case, and nothing is initialised.
"""
from __future__ import annotations

import os
from typing import Any, Sequence


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Processes on this machine (torchrun and accelerate set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def fsdp_requested() -> bool:
    """Whether the launcher asked for FSDP (`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


# How long a process waits for the others at a collective before it fails. torch's default (NCCL: 10 minutes)
# kills long evaluations whose processes finish a task far apart; ours is hours (`set_timeout`, the commands'
# `timeout` setting).
DEFAULT_TIMEOUT = 4 * 3600
_timeout = DEFAULT_TIMEOUT


def set_timeout(seconds: float) -> None:
    """The process group's timeout, used when it is created (at the first barrier)."""
    global _timeout
    _timeout = seconds


def timeout() -> float:
    return _timeout


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (nothing to wait for in a single process)."""
    if world_size() == 1:
        return
    import torch
    import torch.distributed as distributed

    if not distributed.is_initialized():
        import datetime

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local_rank())
        distributed.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=_timeout))
    distributed.barrier()


def main_print(*args: Any, **kwargs: Any) -> None:
    """print, on the main process only."""
    if is_main():
        print(*args, **kwargs)


def share(indices: Sequence[int]) -> list[int]:
    """This process's share of `indices`: every world_size-th one, from its rank (deterministic, disjoint, and
    together all of them)."""
    return list(indices[rank()::world_size()])
