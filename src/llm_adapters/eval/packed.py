"""Linear layers through oneDNN with prepacked weights while a CPU model generates.

A decoding step multiplies a few dozen rows (the questions in flight) by every weight matrix. `F.linear` hands
such skinny products to MKL's sgemm, which on the 2-core CPU runs them at a third to a half of the machine's
rate (SmolLM2's 49,152 x 576 head at 32 rows: 59 against 119 GFLOP/s, docs/benchmarks.md); oneDNN with each
weight reordered once into its blocked layout does not. It is the path torch.compile itself takes for fp32
Linear layers on the CPU when the number of rows varies (`mkldnn._reorder_linear_weight`,
`mkldnn._linear_pointwise`), taken here without compiling the model. The results differ from `F.linear` only
in the rounding of fp32 sums (a few 1e-6 relative).
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

_plain_depth = 0  # > 0 inside `plain_linears`: packed layers take F.linear
_ROWS_HINT = 32  # rows a product usually has in a decoding step: the layout oneDNN picks for the weights
_MEMORY_SHARE = 4  # the packed copies may take at most this fraction (1/4) of the free memory
# Products of more rows than this (a prefill) take F.linear: MKL's sgemm catches up with the packed weights near
# 512 rows and passes them beyond (1,536 rows: 171 against 144 GFLOP/s), and oneDNN builds a kernel for every new
# row count, which a prefill's row count nearly always is (docs/benchmarks.md).
_MAX_ROWS = 512


def _free_memory() -> int | None:
    """Bytes of memory available without swapping: Linux's MemAvailable (free pages and the page cache it can
    reclaim), else the free pages the system reports, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system that reports it
        return None


def _packable(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Linear and module.weight.dtype == torch.float32
            and module.weight.device.type == "cpu"
            and "forward" not in module.__dict__)  # a forward already replaced (accelerate's hooks) stays


def _packed_forward(module: torch.nn.Linear) -> Any:
    # A decoding step calls this ~200 times: names are bound once here (each lookup costs a few microseconds).
    weight, bias, parameters = module.weight, module.bias, module._parameters
    version, packed = weight._version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), _ROWS_HINT)
    linear_pointwise, linear, grad_enabled, fp32 = (torch.ops.mkldnn._linear_pointwise,
                                                    torch.nn.functional.linear, torch.is_grad_enabled, torch.float32)

    def forward(x: torch.Tensor) -> torch.Tensor:
        # the packed copy only while it is the weight's current value (an in-place change bumps `_version`)
        if (_plain_depth or x.numel() > _MAX_ROWS * x.shape[-1] or x.dtype != fp32 or not x.is_cpu or grad_enabled()
                or parameters.get("weight") is not weight or parameters.get("bias") is not bias
                or weight._version != version):
            return linear(x, module.weight, module.bias)
        return linear_pointwise(x, packed, bias, "none", [], "")  # any leading dimensions, as F.linear
    return forward


@contextlib.contextmanager
def packed_linears(model: Any) -> Iterator[int]:
    """Within the block, `model`'s fp32 CPU `nn.Linear` layers multiply through oneDNN with packed copies of
    their weights; yields how many layers were packed (0 where oneDNN is missing, the model is not on the CPU in
    fp32, or the copies would take more than a quarter of the free memory). Gradients take the usual path, and
    so does a layer whose weight changed inside the block. Blocks nest: an inner one leaves the layers an outer
    one packed as they are.
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        yield 0
        return
    modules = [m for m in model.modules() if _packable(m)]
    free = _free_memory()
    size = sum(m.weight.numel() * m.weight.element_size() for m in modules)
    if not modules or free is None or size * _MEMORY_SHARE > free:
        yield 0
        return
    try:
        for module in modules:
            module.forward = _packed_forward(module)
        yield len(modules)
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)


@contextlib.contextmanager
def plain_linears() -> Iterator[None]:
    """Within the block, layers an enclosing `packed_linears` packed multiply through `F.linear` again: for
    results in their own right (log-likelihoods), which keep the rounding of the plain computation they are
    compared with, where packing would gain nothing (their products have hundreds of rows)."""
    global _plain_depth
    _plain_depth += 1
    try:
        yield
    finally:
        _plain_depth -= 1
