"""Benchmark c: chunked prefill. p99 inter-token latency of ongoing streams while long
prompts arrive, with prompts cut into chunks vs run whole in one step, and the throughput
each costs.

    python -m bench.bench_chunked_prefill                                  # about 1 minute
    python -m bench.bench_chunked_prefill --prompt-len 256 --chunk 64 --no-write   # quick
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_MODEL_DIR, markdown_table, run_header, write_section
from bench.flops import ModelShape
from bench.loom_runs import build_engine, greedy_params, warm_up
from bench.workload import random_tokens

SECTION = "Chunked prefill: decode latency while long prompts arrive"
GOAL_ITL = 2.0  # p99 ITL whole / chunked
GOAL_COST = 0.10  # most throughput chunking may cost


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-streams", type=int, default=16, help="ongoing decode streams")
    p.add_argument("--stream-prompt-len", type=int, default=64)
    p.add_argument("--num-long", type=int, default=4, help="long prompts arriving")
    p.add_argument("--prompt-len", type=int, default=2048, help="tokens of each long prompt")
    p.add_argument("--long-output-len", type=int, default=8)
    p.add_argument(
        "--arrival-gap",
        type=int,
        default=48,
        help="a long prompt arrives each time the streams have made this many more tokens",
    )
    p.add_argument("--chunk", type=int, default=512, help="prefill chunk (and step budget)")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternating, pooled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


@dataclass(slots=True)
class Result:
    wall: float
    itls: np.ndarray  # seconds between consecutive tokens of each stream, all streams
    long_ttfts: list[float]
    num_tokens: int  # prompt + generated tokens of every request
    num_steps: int


def run(args: argparse.Namespace, chunked: bool, vocab_size: int) -> Result:
    rng = np.random.default_rng(args.seed)
    whole = args.prompt_len + args.num_streams  # a whole prompt and every decode in one step
    budget = args.chunk if chunked else whole
    stream_len = 16 + args.num_long * args.arrival_gap + 2 * args.arrival_gap
    engine, _ = build_engine(
        args.model,
        args.device,
        max_model_len=max(args.prompt_len + args.long_output_len, 2048),
        max_num_seqs=args.num_streams + args.num_long,
        max_num_batched_tokens=budget,
        long_prefill_threshold=budget,
        enable_prefix_caching=False,
    )
    warm_up(engine)
    streams = {
        engine.add_request(
            random_tokens(rng, vocab_size, args.stream_prompt_len), greedy_params(stream_len)
        )
        for _ in range(args.num_streams)
    }
    long_prompts = [random_tokens(rng, vocab_size, args.prompt_len) for _ in range(args.num_long)]
    produced = dict.fromkeys(streams, 0)
    last_token_at: dict[str, float] = {}
    itls: list[float] = []
    arrived_at: dict[str, float] = {}
    long_ttfts: list[float] = []
    num_steps = 0
    start = time.perf_counter()
    while engine.has_unfinished():
        deltas = engine.step()
        now = time.perf_counter()
        num_steps += 1
        for delta in deltas:
            if not delta.token_ids:
                continue
            if delta.req_id in streams:
                if delta.req_id in last_token_at:
                    itls.append(now - last_token_at[delta.req_id])
                last_token_at[delta.req_id] = now
                produced[delta.req_id] += len(delta.token_ids)
            elif delta.req_id in arrived_at:
                long_ttfts.append(now - arrived_at.pop(delta.req_id))
        # The next long prompt arrives once every stream has made its next `arrival_gap`.
        num_arrived = args.num_long - len(long_prompts)
        if long_prompts and min(produced.values()) >= 16 + num_arrived * args.arrival_gap:
            req_id = engine.add_request(long_prompts.pop(), greedy_params(args.long_output_len))
            arrived_at[req_id] = time.perf_counter()
    wall = time.perf_counter() - start
    num_tokens = args.num_streams * (args.stream_prompt_len + stream_len) + args.num_long * (
        args.prompt_len + args.long_output_len
    )
    return Result(wall, np.array(itls), long_ttfts, num_tokens, num_steps)


def pool(results: list[Result]) -> Result:
    return Result(
        wall=sum(r.wall for r in results),
        itls=np.concatenate([r.itls for r in results]),
        long_ttfts=[t for r in results for t in r.long_ttfts],
        num_tokens=sum(r.num_tokens for r in results),
        num_steps=sum(r.num_steps for r in results),
    )


def main() -> None:
    args = parse_args()
    vocab_size = ModelShape.from_meta_dir(args.model).vocab_size
    runs: dict[bool, list[Result]] = {True: [], False: []}
    for repeat in range(args.repeats):
        # Alternate which mode goes first, so a drift in machine load favours neither.
        for is_chunked in (True, False) if repeat % 2 == 0 else (False, True):
            runs[is_chunked].append(run(args, is_chunked, vocab_size))
    chunked, whole = pool(runs[True]), pool(runs[False])

    def row(name: str, r: Result) -> list[object]:
        return [
            name,
            float(np.percentile(r.itls, 50) * 1e3),
            float(np.percentile(r.itls, 99) * 1e3),
            float(r.itls.max() * 1e3),
            float(np.median(r.long_ttfts) * 1e3),
            r.num_steps,
            r.wall,
            r.num_tokens / r.wall,
        ]

    header = ["prefill", "median ITL ms", "p99 ITL ms", "max ITL ms",
              "long-prompt median TTFT ms", "steps", "wall s", "tokens/s"]  # fmt: skip
    table = markdown_table(
        header,
        [row(f"chunked ({args.chunk} tokens/step)", chunked), row("whole prompt", whole)],
    )
    itl_gain = np.percentile(whole.itls, 99) / np.percentile(chunked.itls, 99)
    cost = 1.0 - (chunked.num_tokens / chunked.wall) / (whole.num_tokens / whole.wall)
    goals = [
        [f"p99 ITL whole / chunked >= {GOAL_ITL:g}x", f"{itl_gain:.2f}x",
         "met" if itl_gain >= GOAL_ITL else "**missed**"],
        [f"throughput cost of chunking <= {GOAL_COST:.0%}", f"{cost:.1%}",
         "met" if cost <= GOAL_COST else "**missed**"],
    ]  # fmt: skip
    body = f"""{run_header(args.device)}
{args.num_streams} streams ({args.stream_prompt_len}-token prompts) decode greedily while
{args.num_long} prompts of {args.prompt_len} tokens arrive, one each time the streams have made
{args.arrival_gap} more tokens (each long prompt asks for {args.long_output_len} tokens). Chunked:
step budget and prefill chunk {args.chunk} tokens, decodes first (Sarathi-style). Whole: budget
{args.prompt_len + args.num_streams} tokens, so a prompt runs in one step together with the
decodes. ITL is the wall time between consecutive tokens of one stream, over all streams;
throughput is every prompt and generated token over the runs' wall time. Each mode ran
{args.repeats} times, alternating which went first; the figures pool the runs (steps and wall
are totals). Random-weight 60M model, float32, prefix cache off.

{table}

{markdown_table(["goal", "measured", "result"], goals)}
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
