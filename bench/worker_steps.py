"""The worker's steps, timed four ways.

decode-floor: one stream decoding (batch 1), step time against the weight-read floor. A decode
step of one sequence must read every weight it multiplies (each layer's projections and MLP,
the LM head; one row of the embedding), and at batch 1 that reading is the work. The floor is
those bytes over this machine's memory rate, measured here as a large tensor copy (bytes
copied per second, the issue's definition) and, stricter, as a read-only pass. The engine runs
one greedy request through `Engine.step()` (scheduler, worker, sampler and detokenizer all
included) and each decode step is timed, at contexts from the prompt length up.

step-profile: two step shapes of the 60M model: a decode-only step of 64 sequences (contexts
drawn from 100-500), and a mixed step of 32 decodes plus a 512-token prefill chunk after 256
cached tokens. Each runs through the worker as it serves (batch building, forward, logits and
sampling), first with the torch reference, then with the CPU kernels; the profiler's self CPU
time per operator is grouped into GEMMs, attention (gathers, SDPA, the kernel), elementwise
work and the rest.

engine-profile: one greedy stream of a model (SmolLM2's packed Q4_1 by default) decoding
through `Engine.step()` (scheduler, worker, sampler, detokenizer): the step time without the
profiler, then the torch profiler's self CPU time per operator over 64 decode steps.

efficiency: Loom's wall time on a workload against the time its forward passes alone take,
replayed for the very step shapes Loom ran: every `StepInput` the scheduler sent is recorded;
afterwards the same worker (same weights, cache and block ids) runs each step's forward pass
again (layers over every scheduled token plus the LM head on the rows that needed logits),
with the batches built before the clock started.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import (
    DEFAULT_MODEL_DIR,
    GREEDY,
    Shape,
    attention_flops,
    bench_parser,
    build_engine,
    doc_paragraph,
    greedy_params,
    linear_flops_per_token,
    markdown_table,
    measure_gemm_flops,
    publish,
    run_header,
    run_workload,
    timed,
    uniform_workload,
    warm_up,
)
from contract.step import NewRequest, StepInput
from worker import create_worker
from worker.runner import ModelRunner
from worker.step_batch import RequestState, StepBatch

# ---- decode-floor ------------------------------------------------------------------------

FLOOR_SECTION = "One-stream decode against the weight-read floor"
FLOOR_GOAL = 1.5  # step time / floor (copy rate)


def weight_bytes(shape: Shape, element_size: int) -> int:
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


def decode_floor(argv: list[str] | None = None) -> None:
    p = bench_parser("decode-floor", "batch-1 decode step against the weight-read floor")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Meta-layout model")
    p.add_argument("--prompt-lens", type=int, nargs="+", default=[16, 512])
    p.add_argument("--num-tokens", type=int, default=64)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    copy_rate, read_rate = memory_rates()
    engine, _ = build_engine(args.model, "cpu")
    num_bytes = weight_bytes(engine.info, 4)
    warm_up(engine)
    rows = []
    with torch.inference_mode():
        for prompt_len in args.prompt_lens:
            times = decode_step_times(engine, prompt_len, args.num_tokens)
            median = statistics.median(times)
            copy_floor, read_floor = num_bytes / copy_rate, num_bytes / read_rate
            verdict = "met" if median / copy_floor <= FLOOR_GOAL else "**missed**"
            rows.append(
                [prompt_len, len(times), median * 1e3, min(times) * 1e3, copy_floor * 1e3,
                 f"{median / copy_floor:.2f} ({verdict})", read_floor * 1e3,
                 f"{median / read_floor:.2f}"]
            )  # fmt: skip
            print(rows[-1])
    header = [
        "prompt tokens", "steps", "step ms, median", "step ms, min", "floor ms (copy rate)",
        f"step / floor (goal <= {FLOOR_GOAL})", "floor ms (read rate)", "step / read floor",
    ]  # fmt: skip
    body = (
        f"{doc_paragraph(__doc__, 'decode-floor')}\n\n{run_header('cpu')}\n"
        f"Model {args.model.name}, float32: {num_bytes / 1e6:.1f} MB read per step. Memory: "
        f"{copy_rate / 1e9:.1f} GB/s copied, {read_rate / 1e9:.1f} GB/s read (1 GiB tensors, "
        f"best of 5), {torch.get_num_threads()} threads.\n\n"
        f"{markdown_table(header, rows)}\n"
    )
    publish(FLOOR_SECTION, body, not args.no_write)


# ---- step-profile ------------------------------------------------------------------------

PROFILE_SECTION = "Worker: where a step's time goes"
GROUPS = {
    "GEMMs": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("loom::paged_attention", "aten::index_select", "aten::index_copy_",
                  "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::where"),
    "norms, RoPE, SiLU, residual": ("loom::add_rms_norm", "loom::rms_norm", "loom::silu_and_mul",
                                    "aten::rms_norm", "aten::_fused_rms_norm", "aten::pow",
                                    "aten::mean", "aten::rsqrt", "aten::mul", "aten::mul_",
                                    "aten::silu_", "aten::add_", "aten::add", "aten::sum",
                                    "aten::div_"),
    "sampling": ("aten::max", "aten::argmax", "aten::log_softmax", "aten::topk"),
}  # fmt: skip


def step_inputs(shape: str, rng: random.Random) -> list[NewRequest]:
    """Requests whose next step is the given shape: decodes have all but one token cached."""
    greedy = GREEDY
    lengths = [rng.randint(100, 500) for _ in range(64 if shape == "decode" else 32)]
    news = []
    for i, n in enumerate(lengths):
        news.append(NewRequest(f"d{i}", [rng.randrange(3, 32000) for _ in range(n)], [], greedy,
                               n - 1))  # fmt: skip
    if shape == "mixed":
        prompt = [rng.randrange(3, 32000) for _ in range(768)]
        news.append(NewRequest("p", prompt, [], greedy, 256))
    return news


def profile_backend(model_dir: Path, backend: str, shape: str, repeats: int) -> dict:
    worker = create_worker(model=str(model_dir), device="cpu", num_kv_blocks=4096,
                           attention_backend=backend)  # fmt: skip
    rng = random.Random(0)
    news = step_inputs(shape, rng)
    free = list(range(4096))
    rng.shuffle(free)
    for new in news:
        new.block_ids = [free.pop() for _ in range(-(-len(new.prompt_token_ids) // 16))]
    chunk = {new.req_id: len(new.prompt_token_ids) - new.num_computed_tokens for new in news}

    def one_step() -> None:
        # The same step again: the requests come back new, their prefixes cached.
        worker.execute(StepInput(new=news, num_scheduled_tokens=chunk))
        worker.execute(StepInput(finished_req_ids=list(chunk)))

    for _ in range(2):
        one_step()
    wall = min(timed(one_step)[0] for _ in range(repeats))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            one_step()
    shares = dict.fromkeys([*GROUPS, "other"], 0.0)
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / repeats
        total += seconds
        group = next((g for g, names in GROUPS.items() if event.key in names), "other")
        shares[group] += seconds
    return {"wall": wall, "total": total, "shares": shares}


def step_profile(argv: list[str] | None = None) -> None:
    p = bench_parser("step-profile", "where a step's time goes, per attention backend")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    rows = []
    with torch.inference_mode():
        for shape in ("decode", "mixed"):
            for backend in ("torch", "cpu"):
                r = profile_backend(args.model, backend, shape, args.repeats)
                shares = [f"{r['shares'][g] * 1e3:.1f} ({r['shares'][g] / r['total']:.0%})"
                          for g in [*GROUPS, "other"]]  # fmt: skip
                rows.append([shape, backend, r["wall"] * 1e3, *shares])
                print(rows[-1])
    header = ["step", "backend", "step ms (best)",
              *[f"{g} ms (share)" for g in [*GROUPS, "other"]]]  # fmt: skip
    body = (
        f"{doc_paragraph(__doc__, 'step-profile')}\n\n"
        f"{run_header('cpu')}\n{markdown_table(header, rows)}\n\n"
        "Shares are of the profiler's self CPU time over all threads' operators, which runs "
        "a little above the step's wall time (profiling costs too).\n"
    )
    publish(PROFILE_SECTION, body, not args.no_write)


# ---- engine-profile ----------------------------------------------------------------------


def engine_profile(argv: list[str] | None = None) -> None:
    from scheduler import Engine

    p = bench_parser("engine-profile", "one stream's decode step through the engine, profiled")
    p.add_argument("--model", default="smollm2", help="a model directory, a GGUF file, smollm2")
    p.add_argument("--threads", type=int, help="default: torch's")
    p.add_argument("--label", default="now", help="the BENCHMARKS.md section's suffix")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 64
    with torch.inference_mode():
        engine = Engine.from_model_dir(args.model, device="cpu", num_kv_blocks=64)
        warm_up(engine)
        engine.add_request([100 + i for i in range(16)], greedy_params(8 + 2 * steps + 8))
        for _ in range(8):
            engine.step()
        plain_ms = timed(lambda: [engine.step() for _ in range(steps)])[0] / steps * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                engine.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [[e.key, e.count // steps, e.self_cpu_time_total / steps / 1e3,
             100 * e.self_cpu_time_total / total] for e in events[:14]]  # fmt: skip
    body = (
        f"{run_header('cpu')}\n{args.model}, one greedy stream through `Engine.step()`: "
        f"{plain_ms:.2f} ms per decode step ({1e3 / plain_ms:.0f} tok/s) without the "
        f"profiler; under it, self CPU time per operator per step over {steps} steps "
        f"({total / steps / 1e3:.2f} ms in operators):\n\n"
        + markdown_table(["operator", "calls per step", "ms per step", "share %"], rows)
    )
    publish(f"Decode step profile: {args.label}", body, not args.no_write)


# ---- efficiency --------------------------------------------------------------------------

EFFICIENCY_SECTION = "Engine efficiency: wall time vs forward passes alone"
EFFICIENCY_GOAL = 0.90  # forward time / Loom wall time


@dataclass(slots=True)
class ReplayStep:
    batch: StepBatch
    num_tokens: int  # tokens computed in the step
    is_decode_only: bool  # every scheduled request computes one token
    flops: int  # matmul FLOPs: layers over the tokens, attention over their context, LM head


def step_flops(shape: Shape, scheduled: list[tuple[RequestState, int]], num_rows: int) -> int:
    flops = num_rows * 2 * shape.dim * shape.vocab_size
    for state, n in scheduled:
        first, last = state.num_computed + 1, state.num_computed + n  # contexts seen
        flops += n * linear_flops_per_token(shape)
        flops += attention_flops(shape, 1) * (first + last) * n // 2
    return flops


def build_batches(runner: ModelRunner, steps: list[StepInput]) -> list[ReplayStep]:
    """Every recorded step as the flat batch its forward ran on (built ahead of timing).
    Running requests take the tokens recorded in the step, so no sampling is needed."""
    states: dict[str, RequestState] = {}
    batches = []
    for step in steps:
        for req_id in step.finished_req_ids:
            states.pop(req_id, None)
        for new in step.new:
            states[new.req_id] = RequestState.from_new(new)
        for running in step.running:
            states[running.req_id].token_ids.extend(running.new_token_ids)
            states[running.req_id].block_ids.extend(running.new_block_ids)
        scheduled = [(states[r], n) for r, n in step.num_scheduled_tokens.items()]
        if not scheduled:
            continue
        batch = runner.build_batch(scheduled)
        batches.append(ReplayStep(
            batch=batch, num_tokens=sum(n for _, n in scheduled),
            is_decode_only=all(n == 1 for _, n in scheduled),
            flops=step_flops(runner.info(), scheduled, len(batch.logits_rows)),
        ))  # fmt: skip
        for state, n in scheduled:
            state.num_computed += n
    return batches


def time_forwards(runner: ModelRunner, steps: list[ReplayStep]) -> list[float]:
    """Seconds of each step's forward pass: the layers over every scheduled token, then the
    LM head on the rows that needed logits."""
    model, layers = runner.model, runner.kv_cache.layers
    seconds = []
    for step in steps:
        batch = step.batch
        wall, _ = timed(lambda b=batch: model.compute_logits(
            model(b.input_ids, b.positions, layers, b.attn), b.logits_rows))  # fmt: skip
        seconds.append(wall)
    return seconds


def efficiency(argv: list[str] | None = None) -> None:
    p = bench_parser("efficiency", "Loom's wall time vs its forward passes alone")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=128)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 512), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-num-seqs", type=int, default=256)
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    engine, recorder = build_engine(args.model, args.device, keep_steps=True,
                                    max_num_seqs=args.max_num_seqs,
                                    max_num_batched_tokens=args.max_num_batched_tokens)  # fmt: skip
    lens = tuple(args.prompt_len), tuple(args.output_len)
    workload = uniform_workload(args.num_requests, *lens, engine.info.vocab_size, args.seed)
    with torch.inference_mode():
        warm_up(engine)
        recorder.clear()
        wall, _ = run_workload(engine, workload)
        worker_seconds = recorder.execute_seconds
        # Replay on the same worker: its model and cache, the block ids Loom used.
        runner = recorder.inner
        batches = build_batches(runner, recorder.steps)
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
    verdict = "met" if ratio >= EFFICIENCY_GOAL else "**missed**"
    prompts = f"{args.prompt_len[0]}-{args.prompt_len[1]}"
    outputs = f"{args.output_len[0]}-{args.output_len[1]}"
    body = f"""{run_header(args.device)}
Workload: {args.num_requests} requests, prompts {prompts} and outputs {outputs} tokens, seed
{args.seed}, greedy, EOS ignored, model {engine.info.model_name} in {engine.info.dtype}.
{doc_paragraph(__doc__, "efficiency")}

{markdown_table(["", "seconds", "share of wall"], rows)}

{markdown_table(["step shapes", ""], steps_table)}

Where the forward time goes, against this machine's best float32 GEMM rate
({gemm_rate / 1e9:.1f} GFLOP/s on {gemm_shape}):

{rates_table}

| goal | measured | result |
|---|---|---|
| forward time / Loom wall time >= {EFFICIENCY_GOAL:.2f} | {ratio:.3f} | {verdict} |
"""
    publish(EFFICIENCY_SECTION, body, not args.no_write)
