"""Benchmark a: useful output tokens/s of Loom vs transformers `generate()` with static
batches vs a Meta-style static batch loop, on one workload in one run; and Loom's wall time
against the compute floor.

    python -m bench.bench_throughput            # 128 requests, several minutes on 2 cores
    python -m bench.bench_throughput --num-requests 32 --prompt-len 16 256   # the 32-request one
    python -m bench.bench_throughput --num-requests 16 --sweep-requests 8 --no-write  # quick

Each workload (request count, length ranges) keeps its own BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.common import DEFAULT_MODEL_DIR, markdown_table, run_header, timed, write_section
from bench.export_hf import export
from bench.flops import ModelShape, measure_gemm_flops, static_batch_flops, workload_flops
from bench.hf_baseline import hf_static_batches, load_hf_model
from bench.loom_runs import build_engine, run_workload, warm_up
from bench.static_batch import DenseLlama, run_static_batches
from bench.workload import Workload, uniform_workload

SECTION = "Throughput vs transformers and a static batch loop"
GOAL_VS_HF = 2.5  # Loom's useful output tokens/s over transformers' best
GOAL_OF_FLOOR = 0.50  # compute floor / Loom wall time


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Meta-layout model")
    p.add_argument("--hf-model", type=Path, help="HF copy (default: MODEL-hf, made if absent)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=128)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 512), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument(
        "--sweep-requests",
        type=int,
        default=32,
        help="transformers' batch sizes are compared on the first N requests; the best then "
        "runs the whole workload",
    )
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


@dataclass(slots=True)
class Run:
    wall: float
    outputs: list[list[int]]


def run_loom(args: argparse.Namespace, workload: Workload) -> Run:
    engine, _ = build_engine(
        args.model,
        args.device,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )
    warm_up(engine)
    return Run(*run_workload(engine, workload))


def run_transformers(
    args: argparse.Namespace, workload: Workload, max_len: int
) -> tuple[Run, int, list[list[object]]]:
    """The batch-size sweep on the first requests, then the best size on everything."""
    hf_dir = args.hf_model or args.model.with_name(args.model.name + "-hf")
    if not (hf_dir / "model.safetensors").exists():
        export(args.model, hf_dir, max_len)
    model = load_hf_model(hf_dir, args.device)
    hf_static_batches(model, [[5, 6, 7]], [2], 1)  # warm-up
    sweep = workload.head(args.sweep_requests)
    sweep_rows: list[list[object]] = []
    sweep_runs: dict[int, Run] = {}
    for bs in args.batch_sizes:
        run = Run(
            *timed(lambda bs=bs: hf_static_batches(model, sweep.prompts, sweep.max_tokens, bs))
        )
        sweep_runs[bs] = run
        sweep_rows.append([bs, run.wall, sweep.num_output_tokens / run.wall])
        log(f"transformers sweep, batch {bs}: {run.wall:.1f} s")
    best_bs = max(sweep_runs, key=lambda bs: sweep.num_output_tokens / sweep_runs[bs].wall)
    # Static batches are independent: when the sweep's requests fill whole batches, the best
    # size's sweep run is the start of the full run, and only the rest needs running.
    done = sweep_runs[best_bs] if len(sweep.prompts) % best_bs == 0 else Run(0.0, [])
    rest = Workload(workload.prompts[len(done.outputs) :], workload.max_tokens[len(done.outputs) :])
    wall, outputs = timed(lambda: hf_static_batches(model, rest.prompts, rest.max_tokens, best_bs))
    return Run(done.wall + wall, done.outputs + outputs), best_bs, sweep_rows


def run_static(args: argparse.Namespace, workload: Workload, max_len: int, bs: int) -> Run:
    model = DenseLlama.load(args.model, max_len, args.device)
    return Run(*timed(lambda: run_static_batches(model, workload.prompts, workload.max_tokens, bs)))


def matches(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b, strict=True))


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def main() -> None:
    args = parse_args()
    shape = ModelShape.from_meta_dir(args.model)
    prompt_range, output_range = tuple(args.prompt_len), tuple(args.output_len)
    workload = uniform_workload(
        args.num_requests, prompt_range, output_range, shape.vocab_size, args.seed
    )
    useful = workload.num_output_tokens
    max_len = prompt_range[1] + output_range[1]
    n = args.num_requests
    log(f"workload: {n} requests, {workload.num_prompt_tokens} prompt, {useful} output tokens")

    gemm_rate, gemm_shape = measure_gemm_flops(args.device)
    flops = workload_flops(shape, [len(p) for p in workload.prompts], workload.max_tokens)
    floor = flops / gemm_rate
    log(f"GEMM {gemm_rate / 1e9:.1f} GFLOP/s on {gemm_shape}; floor {floor:.1f} s")

    loom = run_loom(args, workload)
    log(f"loom: {loom.wall:.1f} s, {useful / loom.wall:.1f} tok/s")
    hf, best_bs, sweep_rows = run_transformers(args, workload, max_len)
    log(f"transformers, batch {best_bs}: {hf.wall:.1f} s, {useful / hf.wall:.1f} tok/s")
    static = run_static(args, workload, max_len, best_bs)
    log(f"static loop, batch {best_bs}: {static.wall:.1f} s, {useful / static.wall:.1f} tok/s")

    prompt_lens = [len(p) for p in workload.prompts]
    padded = static_batch_flops(shape, prompt_lens, workload.max_tokens, best_bs)

    def row(name: str, run: Run, work: float) -> list[object]:
        return [name, run.wall, useful / run.wall, hf.wall / run.wall, work / 1e12,
                work / run.wall / 1e9]  # fmt: skip

    rows = [
        row("Loom (continuous batching)", loom, flops),
        row(f"transformers generate(), batch {best_bs}", hf, padded),
        row(f"Meta-style static loop, batch {best_bs}", static, padded),
    ]
    header = ["system", "wall s", "useful output tok/s", "speed-up vs transformers",
              "matmul TFLOP done", "GFLOP/s"]  # fmt: skip
    speedup, of_floor = hf.wall / loom.wall, floor / loom.wall
    goals = [
        [f"Loom >= {GOAL_VS_HF}x transformers' best useful tok/s", f"{speedup:.2f}x",
         verdict(speedup >= GOAL_VS_HF)],
        [f"compute floor / Loom wall >= {GOAL_OF_FLOOR:.0%}", f"{of_floor:.0%}",
         verdict(of_floor >= GOAL_OF_FLOOR)],
    ]  # fmt: skip
    body = f"""{run_header(args.device)}
Workload: {n} requests, prompts uniform in {prompt_range[0]}-{prompt_range[1]} tokens
({workload.num_prompt_tokens} in all), outputs uniform in {output_range[0]}-{output_range[1]}
tokens ({useful} in all), random token ids (seed {args.seed}), greedy, EOS ignored, the
random-weight model of `bench.make_random_model` ({shape.dim} dim, {shape.n_layers} layers)
in float32 on {args.device}. Useful tokens are only those each request asked for: static
batches run to their longest member and throw the rest away. The three systems run the same
weights (transformers through `bench.export_hf`) on the requests in arrival order.

{markdown_table(header, rows)}

Matmul work counts what each system computes: Loom only the requested tokens, static batches
their padding as well ({padded / flops:.2f}x the useful work at batch {best_bs}). The
speed-up over transformers is that ratio times the two forwards' relative GFLOP/s.

transformers' batch sizes compared on the first {args.sweep_requests} requests; the best then
ran the whole workload (its sweep batches counted as the first batches of that run), and the
static loop used the same size:

{markdown_table(["batch size", "wall s", "useful output tok/s"], sweep_rows)}

Compute floor: {flops / 1e12:.2f} TFLOP of matmuls (projections, MLP, attention over each
token's causal context, the LM head once per output token) at {gemm_rate / 1e9:.1f} GFLOP/s
(the best float32 GEMM measured here, {gemm_shape}) = {floor:.1f} s.

{markdown_table(["goal", "measured", "result"], goals)}

Same work, checked: Loom's greedy outputs equal the static loop's for {
        matches(loom.outputs, static.outputs)
    }/{n} requests, transformers' for {matches(hf.outputs, static.outputs)}/{n}
(float32 sums in another order can flip a near-tie argmax; the sequence then diverges).
"""
    print(body)
    if not args.no_write:
        write_section(
            f"{SECTION}: {n} requests, prompts {prompt_range[0]}-{prompt_range[1]}, "
            f"outputs {output_range[0]}-{output_range[1]}",
            body,
        )


if __name__ == "__main__":
    with torch.inference_mode():
        main()
