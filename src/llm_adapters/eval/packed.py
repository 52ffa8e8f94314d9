"""Linear layers through oneDNN with prepacked weights while a CPU model evaluates: fp32 products for decoding
(`packed_linears`), and bf16 products with fp32 activations on a CPU with bf16 units (`bf16_products`).

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

from llm_adapters.errors import UserError

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


# ------------------------------------------------------------------------------------------------ bf16 products
#
# On a CPU with bf16 units (AVX512-BF16, AMX), oneDNN multiplies bf16 matrices at about twice the fp32 rate, with
# fp32 sums. A model whose weights and activations are all bf16 rounds every intermediate result to bf16: the
# rounding of a sum then depends on which kernel ran the whole batch's shape (its order of additions), so a
# question's answer changes with the questions beside it (3 of 6 GSM8K answers between batch 1 and batch 6 on
# SmolLM2). Here only the products are bf16: each Linear layer rounds its input and weight to bf16 and oneDNN sums
# in fp32; everything else (norms, attention, the residual stream, the KV cache) stays fp32. oneDNN's bf16 inner
# product gives every row the same bits whatever the other rows and the row count, from two rows on (a single row
# goes with a copy of itself; checked by `tests/test_bf16.py`). That does not make answers batch-invariant: the
# fp32 attention's sums differ by ~1e-7 with the batch, and rounding them to bf16 for the next product turns a
# few of those into a bf16 step (1e-2), so answers move now and then (AQuA on SmolLM2, tests/test_invariance.py);
# `decoding.batch_invariant` therefore keeps the batch size and drafts in a bf16-products folder's identity.
#
# A product's result comes back from oneDNN rounded to bf16. For the output layer that would make near-equal
# logits equal (a bf16 step is 1/8 at a logit of 20), so greedy decoding would break such ties by token id; the
# head's logits within two bf16 steps of each row's largest are recomputed as fp32 sums of the same bf16
# products, so the argmax is exactly that of bf16 products with an fp32 result.

_BF16 = torch.bfloat16


def _bf16_forward(module: torch.nn.Linear, head: bool) -> Any:
    weight, bias, parameters = module.weight, module.bias, module._parameters
    state = {"version": weight._version, "packed": None, "rounded": None}
    linear_pointwise, linear, grad_enabled = torch.ops.mkldnn._linear_pointwise, torch.nn.functional.linear, \
        torch.is_grad_enabled

    def current() -> tuple[torch.Tensor, torch.Tensor]:
        """The packed and the plain bf16 copies of the weight as it is now (rebuilt after a change)."""
        now = parameters.get("weight")
        if state["packed"] is None or now is not state.get("weight") or now._version != state["version"]:
            rounded = now.detach().to(_BF16)
            # the plain bf16 copy only where `_refine_top` reads it (the head): elsewhere the packed one alone
            state.update(weight=now, version=now._version, rounded=rounded if head else None,
                         packed=torch.ops.mkldnn._reorder_linear_weight(rounded, _ROWS_HINT))
        return state["packed"], state["rounded"]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if grad_enabled() or not x.is_cpu:  # a differentiable path with the same values
            out = linear(x.to(_BF16), parameters["weight"].to(_BF16)).to(x.dtype)
        else:
            packed, rounded = current()
            x16 = x.to(_BF16)
            if x16.numel() == x16.shape[-1]:  # one row: oneDNN's kernel for one row sums in another order than
                # its kernel for several (measured on SmolLM2's down_proj, 1536 wide), so it goes with a copy
                out = linear_pointwise(x16.reshape(1, -1).expand(2, -1).contiguous(), packed, None, "none", [],
                                       "")[:1].reshape(*x.shape[:-1], -1).to(torch.float32)
            else:
                out = linear_pointwise(x16, packed, None, "none", [], "").to(torch.float32)
            if head:
                out = _refine_top(out, x16, rounded)
        current_bias = parameters.get("bias")
        return out if current_bias is None else out + current_bias
    del bias
    return forward


def _refine_top(logits: torch.Tensor, x16: torch.Tensor, weight16: torch.Tensor) -> torch.Tensor:
    """`logits` (bf16-rounded results of `x16 @ weight16.T`) with every entry within two bf16 steps of its row's
    largest recomputed as the fp32 sum of the same bf16 products: the rows' argmax is then exact."""
    flat = logits.reshape(-1, logits.shape[-1])
    top = flat.max(dim=-1, keepdim=True).values
    near = flat >= top - top.abs() * 2 ** -7 - 1e-30  # a bf16 step is 2^-7 of the value at most: two steps
    rows, columns = near.nonzero(as_tuple=True)
    inputs = x16.reshape(-1, x16.shape[-1])
    # an elementwise product and a sum over the last dimension: each entry from its own row and column only
    exact = (inputs[rows].float() * weight16[columns].float()).sum(-1)
    flat = flat.clone()
    flat[rows, columns] = exact
    return flat.reshape(logits.shape)


def bf16_supported() -> bool:
    """Whether oneDNN runs bf16 products on this machine (with or without bf16 units: see
    `models.cpu_has_native_bf16`)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def bf16_products(model: Any) -> Iterator[int]:
    """Within the block, every fp32 CPU `nn.Linear` of `model` multiplies in bf16 with fp32 sums (its input and
    weight rounded to bf16, the bias added in fp32), the rest of the model staying fp32; yields how many layers
    do. The weights are packed once in bf16 (half the fp32 weights' memory, the output layer's twice); a weight
    changed or replaced inside the block is packed again. Products are the same with gradients on (through `F.linear` on bf16 copies).
    `packed_linears` inside the block leaves these layers as they are.

    Raises:
        RuntimeError: oneDNN has no bf16 products here (check `bf16_supported()` first).
        UserError: the bf16 copies would not fit in the free memory.
    """
    if not bf16_supported():
        raise RuntimeError("oneDNN bf16 products are not available in this torch build or on this CPU")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    modules = [m for m in model.modules() if _packable(m)]
    # bf16 copies: half the fp32 weights, the head twice (packed, and plain for `_refine_top`)
    size = sum(m.weight.numel() * (4 if m is head else 2) for m in modules)
    free = _free_memory()
    if free is not None and size > free:
        raise UserError(f"bf16 products need {size / 2 ** 30:.1f} GiB for bf16 copies of the weights and "
                        f"{free / 2 ** 30:.1f} GiB is free; use --dtype float32 (no copies) or free memory")
    try:
        for module in modules:
            module.forward = _bf16_forward(module, head=module is head)
        yield len(modules)
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)
