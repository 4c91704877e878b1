"""The projections' GEMMs with the weight stored row-major or column-major.

    python -m bench.bench_gemm_layout             # writes its BENCHMARKS.md section
    python -m bench.bench_gemm_layout --no-write

Every projection of the 60M model (fused wqkv, wo, fused w13, w2, the LM head) is run as the
worker runs it, `F.linear(x, w)` in float32, at the row counts of decode and prefill steps,
with `w` [out, in] stored two ways: row-major (as loaded) and column-major (the transpose of a
contiguous [in, out] tensor, worker/weight_layout.py, what the CPU worker uses). The two
layouts alternate within each repeat; the best of the repeats is kept. A step's total weighs
each layer's projections by the number of layers and the LM head once. The last column is the
same GEMMs in bfloat16 (row-major), where the CPU's bf16 units (AVX512-BF16, AMX) would
serve a bf16 model: a measure of what a bf16 CPU path could gain, which Loom does not have.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import DEFAULT_MODEL_DIR, described_run, markdown_table, publish
from bench.flops import ModelShape

SECTION = "Worker: projection weights row-major or column-major"


def best_seconds(fn: Callable[[], object], calls: int, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def projections(shape: ModelShape) -> dict[str, tuple[int, int, int]]:
    """name -> (out_features, in_features, times per step)."""
    q_dim, kv_dim = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    return {
        "wqkv": (q_dim + 2 * kv_dim, shape.dim, shape.n_layers),
        "wo": (shape.dim, q_dim, shape.n_layers),
        "w13": (2 * shape.hidden_dim, shape.dim, shape.n_layers),
        "w2": (shape.dim, shape.hidden_dim, shape.n_layers),
        "LM head": (shape.vocab_size, shape.dim, 1),
    }


def measure(shape: ModelShape, rows: list[int], repeats: int) -> list[list[object]]:
    table = []
    for num_rows in rows:
        totals = [0.0, 0.0, 0.0]
        for out_features, in_features, per_step in projections(shape).values():
            weight = torch.randn(out_features, in_features)
            variants = [
                (weight, torch.randn(num_rows, in_features)),
                (weight.t().contiguous().t(), torch.randn(num_rows, in_features)),
                (weight.bfloat16(), torch.randn(num_rows, in_features, dtype=torch.bfloat16)),
            ]
            calls = max(1, int(2e8 / (2 * num_rows * out_features * in_features)))
            times = [float("inf")] * len(variants)
            for _ in range(repeats):  # alternate, so drift hits every variant alike
                for i, (w, x) in enumerate(variants):
                    step = best_seconds(lambda w=w, x=x: F.linear(x, w), calls, 1)
                    times[i] = min(times[i], step)
            for i, seconds in enumerate(times):
                totals[i] += seconds * per_step
        flops = 2 * num_rows * sum(o * i * n for o, i, n in projections(shape).values())
        table.append(
            [num_rows, totals[0] * 1e3, totals[1] * 1e3, f"{totals[0] / totals[1]:.2f}",
             flops / totals[0] / 1e9, flops / totals[1] / 1e9, totals[2] * 1e3]
        )  # fmt: skip
        print(table[-1])
    return table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Meta-layout model")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 32, 64, 128, 512, 2048])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()
    shape = ModelShape.from_meta_dir(args.model)
    table = measure(shape, args.rows, args.repeats)
    header = [
        "rows", "row-major ms per step", "column-major ms per step", "speed-up",
        "row-major GFLOP/s", "column-major GFLOP/s", "bfloat16 ms per step",
    ]  # fmt: skip
    body = (
        f"{described_run(__doc__, 'cpu')}"
        f"Model {args.model.name}, float32, {torch.get_num_threads()} threads.\n\n"
        f"{markdown_table(header, table)}\n"
    )
    publish(SECTION, body, not args.no_write)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
