"""The engine's answers to prompt load, offline on the 60M model.

prefix-cache: time to first token of requests that share a long prefix, with the prefix
cache on and off. Each request is sent alone, after the previous finished (a shared system
prompt across turns); TTFT is from `add_request` to the first token. The first request finds
the cache cold either way.

chunked-prefill: p99 inter-token latency of ongoing streams while long prompts arrive, with
prompts cut into chunks (step budget and prefill chunk `--chunk` tokens, decodes first,
Sarathi-style) or run whole in one step together with the decodes, and the throughput each
costs. ITL is the wall time between consecutive tokens of one stream, over all streams;
throughput is every prompt and generated token over the runs' wall time.

lora: the same 128-request workload on the base model and spread over 1, 4 and 16 LoRA
adapters, and what the adapter path adds per decoded token at batch 1 and 32.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import (
    DEFAULT_MODEL_DIR,
    bench_parser,
    build_engine,
    greedy_params,
    markdown_table,
    publish,
    random_tokens,
    run_header,
    uniform_workload,
    warm_up,
)
from modelfiles.tokenizer import Tokenizer
from scheduler import Engine

# ---- prefix-cache ------------------------------------------------------------------------

PREFIX_SECTION = "Prefix caching: TTFT of requests sharing a 1,024-token prefix"
PREFIX_GOAL = 5.0  # median TTFT off / on


@dataclass(slots=True)
class PrefixResult:
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


def run_prefix(args, prompts: list[list[int]], cache: bool) -> PrefixResult:
    engine, _ = build_engine(
        args.model,
        args.device,
        max_model_len=max(2048, args.prefix_len + args.suffix_len + args.output_len),
        enable_prefix_caching=cache,
    )
    warm_up(engine)
    result = PrefixResult([], [])
    for prompt in prompts:
        ttft, cached = ttft_of(engine, prompt, args.output_len)
        result.ttfts.append(ttft)
        result.cached_tokens.append(cached)
    return result


def prefix_cache(argv: list[str] | None = None) -> None:
    p = bench_parser("prefix-cache", "TTFT of requests sharing a prefix, cache on and off")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=16)
    p.add_argument("--prefix-len", type=int, default=1024, help="tokens every request shares")
    p.add_argument("--suffix-len", type=int, default=64, help="tokens of each request's own")
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    vocab_size = Tokenizer.from_model_dir(args.model).vocab_size
    prefix = random_tokens(rng, vocab_size, args.prefix_len)
    prompts = [
        prefix + random_tokens(rng, vocab_size, args.suffix_len) for _ in range(args.num_requests)
    ]
    on, off = run_prefix(args, prompts, True), run_prefix(args, prompts, False)

    def row(name: str, r) -> list[object]:
        ms = np.array(r.ttfts) * 1e3
        return [name, float(np.median(ms)), float(ms[0]), float(np.median(ms[1:])),
                float(np.percentile(ms, 90)), f"{np.mean(r.cached_tokens[1:]):.0f}"]  # fmt: skip

    header = ["prefix cache", "median TTFT ms", "first request ms", "median of the rest ms",
              "p90 TTFT ms", "cached prompt tokens / later request"]  # fmt: skip
    table = markdown_table(header, [row("on", on), row("off", off)])
    gain = float(np.median(off.ttfts) / np.median(on.ttfts))
    verdict = "met" if gain >= PREFIX_GOAL else "**missed**"
    body = f"""{run_header(args.device)}
{args.num_requests} requests, each the same {args.prefix_len}-token prefix followed by
{args.suffix_len} tokens of its own (random ids, seed {args.seed}), asking for
{args.output_len} greedy tokens; sent one at a time, each after the previous finished (a shared
system prompt across turns). TTFT is from `add_request` to the first token. The first request
finds the cache cold either way. Random-weight 60M model, float32.

{table}

| goal | measured | result |
|---|---|---|
| median TTFT off / on >= {PREFIX_GOAL:g}x | {gain:.1f}x | {verdict} |
"""
    publish(PREFIX_SECTION, body, not args.no_write)


# ---- chunked-prefill ---------------------------------------------------------------------

CHUNKED_SECTION = "Chunked prefill: decode latency while long prompts arrive"
GOAL_ITL = 2.0  # p99 ITL whole / chunked
GOAL_COST = 0.10  # most throughput chunking may cost


@dataclass(slots=True)
class ChunkedResult:
    wall: float
    itls: np.ndarray  # seconds between consecutive tokens of each stream, all streams
    long_ttfts: list[float]
    num_tokens: int  # prompt + generated tokens of every request
    num_steps: int


def run_chunked(args, chunked: bool, vocab_size: int) -> ChunkedResult:
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
    return ChunkedResult(wall, np.array(itls), long_ttfts, num_tokens, num_steps)


def pool(results: list[ChunkedResult]) -> ChunkedResult:
    return ChunkedResult(
        wall=sum(r.wall for r in results),
        itls=np.concatenate([r.itls for r in results]),
        long_ttfts=[t for r in results for t in r.long_ttfts],
        num_tokens=sum(r.num_tokens for r in results),
        num_steps=sum(r.num_steps for r in results),
    )


def chunked_prefill(argv: list[str] | None = None) -> None:
    p = bench_parser("chunked-prefill", "streams' inter-token latency while long prompts arrive")
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
    args = p.parse_args(argv)
    vocab_size = Tokenizer.from_model_dir(args.model).vocab_size
    runs: dict[bool, list[ChunkedResult]] = {True: [], False: []}
    for repeat in range(args.repeats):
        # Alternate which mode goes first, so a drift in machine load favours neither.
        for is_chunked in (True, False) if repeat % 2 == 0 else (False, True):
            runs[is_chunked].append(run_chunked(args, is_chunked, vocab_size))
    chunked, whole = pool(runs[True]), pool(runs[False])

    def row(name: str, r) -> list[object]:
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
    publish(CHUNKED_SECTION, body, not args.no_write)


# ---- lora --------------------------------------------------------------------------------

LORA_SECTION = "LoRA adapters: throughput with 1, 4 and 16 adapters mixed vs the base model"
LORA_GOAL = 0.7  # throughput with 16 adapters / the base model's


def run_lora_mix(engine: Engine, workload, names: list[str | None]) -> float:
    """Tokens per second of `workload` with request i on adapter names[i % len(names)]."""
    params = [greedy_params(n) for n in workload.max_tokens]
    loras = [names[i % len(names)] for i in range(len(workload.prompts))]
    start = time.perf_counter()
    engine.generate(workload.prompts, params, loras=loras)
    wall = time.perf_counter() - start
    return (workload.num_prompt_tokens + workload.num_output_tokens) / wall


def decode_ms_per_token(engine: Engine, batch: int, lora: str | None, output_len: int) -> float:
    """Wall ms per generated token of `batch` requests decoding together, all on `lora`."""
    prompts = [[5 + i, 6, 7, 8] for i in range(batch)]
    start = time.perf_counter()
    engine.generate(prompts, greedy_params(output_len), loras=lora)
    return (time.perf_counter() - start) * 1e3 / (batch * output_len)


def lora(argv: list[str] | None = None) -> None:
    """lora: a 128-request workload (random prompts of 32-128 tokens, 32-64 greedy tokens
    each) on the base model alone, then with its requests spread round-robin over 1, 4 and
    16 random rank-16 adapters of every projection (--max-loras 16, so any mix runs in one
    step); and the per-token cost of the adapter path: `batch` requests decoding together,
    all on one adapter or all on none."""
    from worker.random_model import write_random_lora

    p = bench_parser("lora", "throughput with 1, 4, 16 LoRA adapters vs the base model")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=128)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--adapters-dir", type=Path, default=DEFAULT_MODEL_DIR.parent / "loras")
    p.add_argument("--repeats", type=int, default=2, help="runs of each mix, pooled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    params = json.loads((args.model / "params.json").read_text())
    specs = tuple(
        f"a{i}={write_random_lora(args.adapters_dir / f'a{i}', params, args.rank, i)}"
        for i in range(16)
    )
    engine, _ = build_engine(
        args.model, args.device, lora=specs, max_loras=16, max_lora_rank=args.rank,
        max_num_seqs=128, max_num_batched_tokens=2048,
    )  # fmt: skip
    warm_up(engine)
    vocab_size = engine.info.vocab_size
    workload = uniform_workload(args.num_requests, (32, 128), (32, 64), vocab_size, args.seed)
    mixes: dict[str, list[str | None]] = {
        "base model alone": [None],
        **{f"{k} adapter{'s' * (k > 1)}": [f"a{i}" for i in range(k)] for k in (1, 4, 16)},
    }
    rates: dict[str, list[float]] = {name: [] for name in mixes}
    for repeat in range(args.repeats):
        order = list(mixes) if repeat % 2 == 0 else list(reversed(mixes))
        for name in order:  # alternated, so a drift in load favours none
            rates[name].append(run_lora_mix(engine, workload, mixes[name]))
    base = float(np.mean(rates["base model alone"]))
    rows = [[name, float(np.mean(r)), float(np.mean(r)) / base] for name, r in rates.items()]
    cost_rows = []
    for batch in (1, 32):
        plain = decode_ms_per_token(engine, batch, None, 32)
        adapted = decode_ms_per_token(engine, batch, "a0", 32)
        cost_rows.append([batch, plain, adapted, adapted - plain, adapted / plain])
    ratio = float(np.mean(rates["16 adapters"])) / base
    verdict = "met" if ratio >= LORA_GOAL else "**missed**"
    body = f"""{run_header(args.device)}
{" ".join((lora.__doc__ or "").removeprefix("lora: ").split())}
Each mix ran {args.repeats} times, alternating the order; tokens/s counts prompt and generated
tokens over the wall time of `Engine.generate`. Random-weight 60M model, float32.

{markdown_table(["requests on", "tokens/s", "vs base"], rows)}

{markdown_table(["decode batch", "base ms/token", "adapter ms/token",
                 "adapter path ms/token", "ratio"], cost_rows)}

| goal | measured | result |
|---|---|---|
| 16 adapters >= {LORA_GOAL:g}x the base model's throughput | {ratio:.2f}x | {verdict} |
"""
    publish(LORA_SECTION, body, not args.no_write)
