"""What bounds a decoding step on this machine: the matrix products at each row count (`F.linear`, and oneDNN with
packed weights as the engine multiplies on the CPU), and attention under grouped-query heads three ways: the
cache repeated per head (transformers' SDPA path under a mask), grouped by the kernel itself (`enable_gqa`), and a
group's query heads stacked as rows (`eval/attention.py`, what the engine runs on the CPU).

    PYTHONPATH=src .venv/bin/python benchmarks/engine_parts.py          # about a minute on 2 cores

Shapes are SmolLM2-135M's: hidden 576, 9 query heads over 3 key/value heads of 64, MLP 1536, vocabulary
49,152, 30 layers. Each figure is the best of a few repetitions.
"""
from __future__ import annotations

import time

import torch

from llm_adapters.eval.attention import grouped_sdpa

F = torch.nn.functional
SHAPES = {"q/o 576x576": (576, 576), "k/v 192x576": (192, 576), "up/gate 1536x576": (1536, 576),
          "down 576x1536": (576, 1536), "head 49152x576": (49152, 576)}


def best(run, repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    peak = 2 * 2048 ** 3 / best(lambda: a @ b) / 1e9
    print(f"2048x2048 fp32 matmul: {peak:.1f} GFLOP/s ({torch.get_num_threads()} threads)\n")
    print("| rows | " + " | ".join(SHAPES) + " |")
    print("|---:|" + "---:|" * len(SHAPES))
    for rows in (1, 8, 32, 64, 128, 256, 1024):
        cells = []
        for n, k in SHAPES.values():
            w, x = torch.randn(n, k), torch.randn(rows, k)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 32)  # as eval/packed.py packs them
            flop = 2 * rows * n * k / 1e9
            plain = flop / best(lambda: F.linear(x, w))
            onednn = flop / best(lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""))
            cells.append(f"{plain:.0f} / {onednn:.0f}")
        print(f"| {rows} | " + " | ".join(cells) + " |")
    print("\nGFLOP/s of each Linear shape by rows (tokens) at once: F.linear (MKL) / oneDNN with the weight packed"
          " (the engine's).\n")
    batch, heads, groups, dim, width, layers = 32, 9, 3, 64, 400, 30
    print(f"attention, {batch} rows x {width} cached columns, ms for {layers} layers (each its own cache, as in a "
          f"step):\n")
    print("| tokens a row | cache repeated per head | kernel's GQA | stacked heads | largest difference |")
    print("|---:|---:|---:|---:|---:|")

    class Layer:
        num_key_value_groups = heads // groups

    for q_len in (1, 2, 4, 9):
        q = torch.randn(batch, heads, q_len, dim)
        caches = [(torch.randn(batch, groups, width, dim), torch.randn(batch, groups, width, dim))
                  for _ in range(layers)]
        mask = torch.rand(batch, 1, q_len, width) > 0.1

        def repeated() -> list[torch.Tensor]:
            shape = (batch, groups, heads // groups, width, dim)
            return [F.scaled_dot_product_attention(q, k[:, :, None].expand(shape).reshape(batch, heads, width, dim),
                                                   v[:, :, None].expand(shape).reshape(batch, heads, width, dim),
                                                   attn_mask=mask) for k, v in caches]

        def grouped() -> list[torch.Tensor]:
            return [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True) for k, v in caches]

        def stacked() -> list[torch.Tensor]:  # (batch, tokens, heads, dim): transposed back for the comparison
            return [grouped_sdpa(Layer(), q, k, v, mask)[0].transpose(1, 2) for k, v in caches]

        diff = max(float((a - b).abs().max()) for outs in (grouped(), stacked()) for a, b in zip(outs, repeated()))
        print(f"| {q_len} | {best(repeated) * 1e3:.0f} | {best(grouped) * 1e3:.0f} | {best(stacked) * 1e3:.0f} "
              f"| {diff:.1e} |")

if __name__ == "__main__":
    main()
