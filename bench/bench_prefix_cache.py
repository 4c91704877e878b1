"""Benchmark d: prefix caching. Time to first token of requests that share a long prefix,
with the prefix cache on vs off.

    python -m bench.bench_prefix_cache                                   # under a minute
    python -m bench.bench_prefix_cache --prefix-len 128 --num-requests 4 --no-write  # quick
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
from scheduler import Engine

SECTION = "Prefix caching: TTFT of requests sharing a 1,024-token prefix"
GOAL = 5.0  # median TTFT off / on


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--prefix-len", type=int, default=1024, help="tokens every request shares")
    p.add_argument("--suffix-len", type=int, default=64, help="tokens of each request's own")
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


@dataclass(slots=True)
class Result:
    ttfts: list[float]  # seconds, in arrival order
    cached_tokens: list[int]  # prompt tokens each request took from the cache


def ttft_of(engine: Engine, prompt: list[int], max_tokens: int) -> tuple[float, int]:
    """Send one request alone and run it to the end; its TTFT and cached prompt tokens."""
    start = time.perf_counter()
    req_id = engine.add_request(prompt, greedy_params(max_tokens))
    ttft, cached = None, 0
    while engine.has_unfinished():
        for delta in engine.step():
            if delta.req_id != req_id:
                continue
            if ttft is None and delta.token_ids:
                ttft = time.perf_counter() - start
            if delta.usage is not None:
                cached = delta.usage.cached_prompt_tokens
    assert ttft is not None
    return ttft, cached


def run(args: argparse.Namespace, prompts: list[list[int]], cache: bool) -> Result:
    engine, _ = build_engine(
        args.model,
        args.device,
        max_model_len=max(2048, args.prefix_len + args.suffix_len + args.output_len),
        enable_prefix_caching=cache,
    )
    warm_up(engine)
    result = Result([], [])
    for prompt in prompts:
        ttft, cached = ttft_of(engine, prompt, args.output_len)
        result.ttfts.append(ttft)
        result.cached_tokens.append(cached)
    return result


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(args.seed)
    vocab_size = ModelShape.from_meta_dir(args.model).vocab_size
    prefix = random_tokens(rng, vocab_size, args.prefix_len)
    prompts = [
        prefix + random_tokens(rng, vocab_size, args.suffix_len) for _ in range(args.num_requests)
    ]
    on, off = run(args, prompts, cache=True), run(args, prompts, cache=False)

    def row(name: str, r: Result) -> list[object]:
        ms = np.array(r.ttfts) * 1e3
        return [name, float(np.median(ms)), float(ms[0]), float(np.median(ms[1:])),
                float(np.percentile(ms, 90)), f"{np.mean(r.cached_tokens[1:]):.0f}"]  # fmt: skip

    header = ["prefix cache", "median TTFT ms", "first request ms", "median of the rest ms",
              "p90 TTFT ms", "cached prompt tokens / later request"]  # fmt: skip
    table = markdown_table(header, [row("on", on), row("off", off)])
    gain = float(np.median(off.ttfts) / np.median(on.ttfts))
    verdict = "met" if gain >= GOAL else "**missed**"
    body = f"""{run_header(args.device)}
{args.num_requests} requests, each the same {args.prefix_len}-token prefix followed by
{args.suffix_len} tokens of its own (random ids, seed {args.seed}), asking for
{args.output_len} greedy tokens; sent one at a time, each after the previous finished (a shared
system prompt across turns). TTFT is from `add_request` to the first token. The first request
finds the cache cold either way. Random-weight 60M model, float32.

{table}

| goal | measured | result |
|---|---|---|
| median TTFT off / on >= {GOAL:g}x | {gain:.1f}x | {verdict} |
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
