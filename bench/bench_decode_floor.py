"""One stream decoding (batch 1): step time against the weight-read floor.

    python -m bench.bench_decode_floor             # writes its BENCHMARKS.md section
    python -m bench.bench_decode_floor --no-write

A decode step of one sequence must read every weight it multiplies (each layer's projections
and MLP, the LM head; one row of the embedding), and at batch 1 that reading is the work. The
floor is those bytes over this machine's memory rate, measured here as a large tensor copy
(bytes copied per second, the issue's definition) and, stricter, as a read-only pass. The
engine runs one greedy request through `Engine.step()` (scheduler, worker, sampler and
detokenizer all included) and each decode step is timed, at contexts from the prompt length
up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.common import DEFAULT_MODEL_DIR, described_run, markdown_table, publish
from bench.flops import ModelShape
from bench.loom_runs import build_engine, greedy_params, warm_up

SECTION = "One-stream decode against the weight-read floor"
GOAL = 1.5  # step time / floor (copy rate)


def weight_bytes(shape: ModelShape, element_size: int) -> int:
    """Bytes a one-token step reads: every layer's matrices and norms, the LM head and final
    norm, one embedding row."""
    q_dim, kv_dim = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    per_layer = shape.dim * (q_dim + 2 * kv_dim) + q_dim * shape.dim
    per_layer += 3 * shape.dim * shape.hidden_dim + 2 * shape.dim
    total = shape.n_layers * per_layer + shape.vocab_size * shape.dim + 2 * shape.dim
    return total * element_size


def memory_rates(num_bytes: int = 1 << 30, repeats: int = 5) -> tuple[float, float]:
    """(bytes copied per second, bytes read per second) on large float32 tensors."""
    src = torch.randn(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s, read_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        copy_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        src.sum()
        read_s.append(time.perf_counter() - start)
    return num_bytes / min(copy_s), num_bytes / min(read_s)


def decode_step_times(engine, prompt_len: int, num_tokens: int) -> list[float]:
    """Wall time of each engine step after the first (the prefill) for one greedy request."""
    engine.add_request(list(range(3, 3 + prompt_len)), greedy_params(num_tokens))
    engine.step()  # the prefill and the first token
    times = []
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return times[:-1] if len(times) > 1 else times  # the last step only tells the worker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Meta-layout model")
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[16, 512])
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()
    shape = ModelShape.from_meta_dir(args.model)
    num_bytes = weight_bytes(shape, 4)
    copy_rate, read_rate = memory_rates()
    engine, _ = build_engine(args.model, "cpu")
    warm_up(engine)
    rows = []
    for prompt_len in args.prompt_lens:
        times = decode_step_times(engine, prompt_len, args.num_tokens)
        median = statistics.median(times)
        copy_floor, read_floor = num_bytes / copy_rate, num_bytes / read_rate
        verdict = "met" if median / copy_floor <= GOAL else "**missed**"
        rows.append(
            [prompt_len, len(times), median * 1e3, min(times) * 1e3, copy_floor * 1e3,
             f"{median / copy_floor:.2f} ({verdict})", read_floor * 1e3,
             f"{median / read_floor:.2f}"]
        )  # fmt: skip
        print(rows[-1])
    header = [
        "prompt tokens", "steps", "step ms, median", "step ms, min", "floor ms (copy rate)",
        f"step / floor (goal <= {GOAL})", "floor ms (read rate)", "step / read floor",
    ]  # fmt: skip
    body = (
        f"{described_run(__doc__, 'cpu')}"
        f"Model {args.model.name}, float32: {num_bytes / 1e6:.1f} MB read per step. Memory: "
        f"{copy_rate / 1e9:.1f} GB/s copied, {read_rate / 1e9:.1f} GB/s read (1 GiB tensors, "
        f"best of 5), {torch.get_num_threads()} threads.\n\n"
        f"{markdown_table(header, rows)}\n"
    )
    publish(SECTION, body, not args.no_write)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
