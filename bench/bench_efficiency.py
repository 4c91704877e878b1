"""Benchmark b: engine efficiency. Loom's wall time on a workload against the time its
forward passes alone take, replayed for the very step shapes Loom ran.

    python -m bench.bench_efficiency                  # benchmark a's 128-request workload
    python -m bench.bench_efficiency --num-requests 16 --no-write   # quick
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_MODEL_DIR, markdown_table, run_header, write_section
from bench.flops import ModelShape, measure_gemm_flops
from bench.loom_runs import build_engine, run_workload, warm_up
from bench.replay import build_batches, time_forwards
from bench.workload import uniform_workload

SECTION = "Engine efficiency: wall time vs forward passes alone"
GOAL = 0.90  # forward time / Loom wall time


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=128)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 512), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    shape = ModelShape.from_meta_dir(args.model)
    workload = uniform_workload(
        args.num_requests, tuple(args.prompt_len), tuple(args.output_len), shape.vocab_size,
        args.seed,
    )  # fmt: skip
    engine, recorder = build_engine(
        args.model,
        args.device,
        record=True,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    warm_up(engine)
    recorder.steps.clear()
    recorder.execute_seconds = 0.0
    wall, _ = run_workload(engine, workload)
    steps, worker_seconds = recorder.steps, recorder.execute_seconds

    # Replay on the same worker: its model and cache, the block ids Loom used.
    runner = recorder.inner
    batches = build_batches(runner, steps, shape)
    time_forwards(runner, batches[: min(8, len(batches))])  # warm-up
    forward = np.array(time_forwards(runner, batches))
    forward_total = float(forward.sum())
    num_tokens = np.array([b.num_tokens for b in batches])
    decode_only = np.array([b.is_decode_only for b in batches])
    flops = np.array([b.flops for b in batches], dtype=np.float64)
    ratio = forward_total / wall
    gemm_rate, gemm_shape = measure_gemm_flops(args.device)

    def rate_row(name: str, which: np.ndarray) -> list[object]:
        seconds = float(forward[which].sum())
        rate = flops[which].sum() / seconds if seconds else 0.0
        return [name, int(which.sum()), int(num_tokens[which].sum()), seconds,
                flops[which].sum() / 1e12, rate / 1e9, f"{rate / gemm_rate:.0%}"]  # fmt: skip

    rows = [
        ["Loom wall time (engine.generate)", wall, 1.0],
        ["  inside worker.execute (forward, batch building, sampling)", worker_seconds,
         worker_seconds / wall],
        ["  forward passes alone, replayed", forward_total, ratio],
        ["  scheduler, engine loop, detokenizing (wall - execute)", wall - worker_seconds,
         (wall - worker_seconds) / wall],
        ["  worker work besides the forward (execute - forward)",
         worker_seconds - forward_total, (worker_seconds - forward_total) / wall],
    ]  # fmt: skip
    steps_table = [
        ["steps", len(batches)],
        ["tokens per step: mean / max", f"{num_tokens.mean():.1f} / {num_tokens.max()}"],
        ["decode-only steps", int(decode_only.sum())],
        ["forward ms per step: median / p99", f"{np.median(forward) * 1e3:.1f} / "
         f"{np.percentile(forward, 99) * 1e3:.1f}"],
    ]  # fmt: skip
    rates_table = markdown_table(
        ["replayed steps", "steps", "tokens", "forward s", "TFLOP", "GFLOP/s", "of GEMM peak"],
        [
            rate_row("with a prefill chunk", ~decode_only),
            rate_row("decode only", decode_only),
            rate_row("all", np.ones_like(decode_only)),
        ],
    )
    verdict = "met" if ratio >= GOAL else "**missed**"
    prompts = f"{args.prompt_len[0]}-{args.prompt_len[1]}"
    outputs = f"{args.output_len[0]}-{args.output_len[1]}"
    body = f"""{run_header(args.device)}
Workload: benchmark a's ({args.num_requests} requests, prompts {prompts} and outputs
{outputs} tokens, seed {args.seed}, greedy, EOS ignored), random-weight 60M model, float32.
Every `StepInput` the scheduler sent was recorded; afterwards the same worker (same
weights, cache and block ids) ran each step's forward pass again (layers over every
scheduled token plus the LM head on the rows that needed logits), with the batches built
before the clock started.

{markdown_table(["", "seconds", "share of wall"], rows)}

{markdown_table(["step shapes", ""], steps_table)}

Where the forward time goes, against this machine's best float32 GEMM rate
({gemm_rate / 1e9:.1f} GFLOP/s on {gemm_shape}):

{rates_table}

| goal | measured | result |
|---|---|---|
| forward time / Loom wall time >= {GOAL:.2f} | {ratio:.3f} | {verdict} |
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
