"""The router over two engine replicas: the shared-prefix workload under `prefix`,
`least_loaded` and `round_robin` (prefix-cache hit tokens, TTFT, throughput), `prefix` at
several load margins, and the latency the router adds to a request.

    python -m bench router                   # stories260K, a few minutes
    python -m bench router --no-write --margins 0.5

Every engine is `python -m frontend serve` in its own process with one torch thread (one
core each, as one GPU each would be), KV cache sized so each holds about half the prefixes;
the router is `python -m router serve` in its own process; the client runs here. Fresh
engines for every run, so no run inherits another's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import statistics
import sys
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import STORIES_DIR, bench_parser, log, markdown_table, publish, run_header
from bench.servers import ServeProcess, free_port, serve_argv
from client import Client
from loadtest.datasets import SampleRequest
from loadtest.driver import DriverOptions, run_workload
from router.config import DEFAULT_PREFIX_LOAD_MARGIN

SECTION = "Router: prefix-aware routing over two replicas"
POLICIES = ("prefix", "least_loaded", "round_robin")


FIRST_ORDINARY_ID = 3  # <unk>, <s>, </s> come first in SentencePiece Llama vocabularies


@dataclass(slots=True, frozen=True)
class SharedPrefixWorkload:
    """`num_prefixes` prefixes of `prefix_len` random tokens, `per_prefix` requests each on
    average (the prefix, then a suffix of its own; with `hot_share`, one prefix takes that
    share of them), shuffled."""

    num_prefixes: int = 8
    prefix_len: int = 256
    per_prefix: int = 8
    suffix_len: int = 8
    max_tokens: int = 4
    vocab_size: int = 512
    seed: int = 0
    # Skew: this share of all requests use prefix 0, the rest spread over the others.
    hot_share: float = 0.0

    @property
    def num_requests(self) -> int:
        return self.num_prefixes * self.per_prefix

    def prefix_of_each(self) -> list[int]:
        num_hot = round(self.hot_share * self.num_requests)
        if num_hot == 0 or self.num_prefixes == 1:
            return [i % self.num_prefixes for i in range(self.num_requests)]
        rest = range(self.num_requests - num_hot)
        return [0] * num_hot + [1 + i % (self.num_prefixes - 1) for i in rest]

    def prompts(self) -> list[list[int]]:
        rng = random.Random(self.seed)

        def tokens(num: int) -> list[int]:
            return [rng.randrange(FIRST_ORDINARY_ID, self.vocab_size) for _ in range(num)]

        prefixes = [tokens(self.prefix_len) for _ in range(self.num_prefixes)]
        prompts = [prefixes[i] + tokens(self.suffix_len) for i in self.prefix_of_each()]
        rng.shuffle(prompts)
        return prompts


@dataclass(slots=True)
class RunResult:
    ttfts: list[float]  # seconds, one per completed request
    e2es: list[float]
    num_output_tokens: int
    num_failed: int
    duration: float  # first send to last reply

    @property
    def median_ttft_ms(self) -> float:
        return statistics.median(self.ttfts) * 1000 if self.ttfts else float("nan")

    @property
    def p90_ttft_ms(self) -> float:
        if len(self.ttfts) < 2:
            return self.median_ttft_ms
        return statistics.quantiles(self.ttfts, n=10)[-1] * 1000

    @property
    def median_e2e_ms(self) -> float:
        return statistics.median(self.e2es) * 1000 if self.e2es else float("nan")

    @property
    def requests_per_s(self) -> float:
        return len(self.e2es) / self.duration if self.duration else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.num_output_tokens / self.duration if self.duration else 0.0


def drive(target: str, prompts: list, max_tokens: int, concurrency: int) -> RunResult:
    """Every prompt (token ids, or text the server tokenizes) sent at once through loadtest's
    driver, greedy, EOS ignored, at most `concurrency` in flight."""
    requests = [
        SampleRequest(prompt_len=len(p), max_tokens=max_tokens, ignore_eos=True,
                      **({"prompt": p} if isinstance(p, str) else {"prompt_token_ids": p}))
        for p in prompts
    ]  # fmt: skip
    options = DriverOptions(max_concurrency=concurrency, show_progress=False, timeout=120.0)
    results, duration, _ = asyncio.run(
        run_workload(target, requests, [0.0] * len(requests), options, np.random.default_rng(0))
    )
    done = [r for r in results if r.ok]
    num_tokens = sum(r.output_len for r in done)
    ttfts, e2es = [r.ttft for r in done], [r.e2el for r in done]
    return RunResult(ttfts, e2es, num_tokens, len(results) - len(done), duration)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("router", __doc__)
    p.add_argument("--model", type=Path, default=STORIES_DIR)
    p.add_argument("--num-prefixes", type=int, default=8)
    p.add_argument("--prefix-len", type=int, default=256)
    p.add_argument("--per-prefix", type=int, default=16, help="requests per prefix")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--num-kv-blocks", type=int, default=80, help="per engine: ~half the prefixes")
    p.add_argument("--max-num-seqs", type=int, default=4, help="per engine: what it runs at once")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--hot-share", type=float, default=0.75, help="skewed: share on one prefix")
    p.add_argument(
        "--margins", type=float, nargs="*", default=[0, 0.25, 0.5, 2, 16], help="prefix policy"
    )
    p.add_argument("--latency-requests", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args(argv)


def engine(args: argparse.Namespace, stack: ExitStack) -> str:
    flags = ["--num-kv-blocks", str(args.num_kv_blocks), "--max-num-seqs", str(args.max_num_seqs)]
    process = ServeProcess(serve_argv(args.model, *flags), OMP_NUM_THREADS="1")
    stack.callback(process.stop)
    return process.target


def router(backends: list[str], policy: str, margin: float, stack: ExitStack) -> tuple[str, int]:
    metrics_port = free_port()
    command = [sys.executable, "-m", "router", "serve", "--port", "0", "--policy", policy,
               "--prefix-load-margin", str(margin), "--metrics-port",
               str(metrics_port)]  # fmt: skip
    for backend in backends:
        command += ["--backend", backend]
    process = ServeProcess(command)
    stack.callback(process.stop)
    with grpc.insecure_channel(process.target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        while check(health_pb2.HealthCheckRequest(), timeout=10).status != 1:  # SERVING
            pass
    return process.target, metrics_port


def hit_tokens(engines: list[str]) -> tuple[int, int]:
    """Prompt tokens looked up and found in the engines' prefix caches, all together."""
    queries = hits = 0
    for target in engines:
        with Client(target) as client:
            load = client.load()
        queries, hits = queries + load.prefix_cache_queries, hits + load.prefix_cache_hits
    return queries, hits


def run_policy(
    args: argparse.Namespace, workload: SharedPrefixWorkload, policy: str, margin: float
) -> tuple[RunResult, int, int]:
    with ExitStack() as stack:
        engines = [engine(args, stack) for _ in range(2)]
        target, _ = router(engines, policy, margin, stack)
        result = drive(target, workload.prompts(), workload.max_tokens, args.concurrency)
        queries, hits = hit_tokens(engines)
    return result, queries, hits


def scraped(metrics_port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def added_latency(args: argparse.Namespace) -> list[list[object]]:
    """One request at a time, straight to an engine and through a router in front of it."""
    workload = SharedPrefixWorkload(
        num_prefixes=args.latency_requests, prefix_len=32, per_prefix=1, suffix_len=0,
        max_tokens=1, seed=args.seed + 1,
    )  # fmt: skip
    prompts = workload.prompts()
    rows = []
    with ExitStack() as stack:
        backend = engine(args, stack)
        routed, metrics_port = router([backend], "prefix", DEFAULT_PREFIX_LOAD_MARGIN, stack)
        drive(backend, prompts[:20], 1, 1)  # warm both paths up
        drive(routed, prompts[:20], 1, 1)
        texts = [f"Once upon a time there was a cat called {i}." for i in range(len(prompts))]
        for name, target, batch in (
            ("token ids, engine directly", backend, prompts),
            ("token ids, through the router", routed, prompts),
            ("text, engine directly", backend, texts),
            ("text, through the router (+ Tokenize)", routed, texts),
        ):
            result = drive(target, batch, 1, 1)
            rows.append([name, len(result.e2es), result.median_ttft_ms, result.median_e2e_ms])
        total = scraped(metrics_port, "loom:router_added_latency_seconds_sum")
        count = scraped(metrics_port, "loom:router_added_latency_seconds_count")
    rows.append(["router's own routing time (mean, its metric)", int(count), total / count * 1e3,
                 ""])  # fmt: skip
    return rows


def workloads(args: argparse.Namespace) -> dict[str, SharedPrefixWorkload]:
    base = SharedPrefixWorkload(
        num_prefixes=args.num_prefixes, prefix_len=args.prefix_len, per_prefix=args.per_prefix,
        max_tokens=args.max_tokens, seed=args.seed,
    )  # fmt: skip
    return {
        "uniform": base,
        f"skewed ({args.hot_share:.0%} on one prefix)": dataclasses.replace(
            base, hot_share=args.hot_share
        ),
    }


Figures = dict[str, float]


def policy_rows(
    args: argparse.Namespace, workload: SharedPrefixWorkload
) -> tuple[list[list[object]], dict[str, Figures]]:
    """The table's rows, and the figures the summary quotes: by policy (`prefix` at the
    default margin), and by margin (`margin M`)."""
    rows, figures = [], {}
    runs = [(p, DEFAULT_PREFIX_LOAD_MARGIN) for p in POLICIES]
    runs += [("prefix", m) for m in args.margins if m != DEFAULT_PREFIX_LOAD_MARGIN]
    for i, (policy, margin) in enumerate(runs):
        result, queries, hits = run_policy(args, workload, policy, margin)
        rows.append([
            policy, f"{margin:g}" if policy == "prefix" else "", len(result.e2es),
            result.num_failed, hits, hits / queries if queries else 0.0, result.median_ttft_ms,
            result.p90_ttft_ms, result.median_e2e_ms, result.requests_per_s,
            result.output_tokens_per_s,
        ])  # fmt: skip
        figure = {"hits": hits, "ttft": result.median_ttft_ms, "rate": result.requests_per_s}
        figures[policy if i < len(POLICIES) else f"margin {margin:g}"] = figure
        if policy == "prefix" and i < len(POLICIES):
            figures[f"margin {margin:g}"] = figure
        log(f"{policy} margin {margin:g}: {hits} hit tokens, TTFT p50 "
            f"{result.median_ttft_ms:.1f} ms")  # fmt: skip
    return rows, figures


def summary(name: str, figures: dict[str, Figures]) -> str:
    p, rr, ll = figures["prefix"], figures["round_robin"], figures["least_loaded"]
    return (
        f"- {name}: `prefix` (margin {DEFAULT_PREFIX_LOAD_MARGIN:g}) served "
        f"{p['hits'] / max(rr['hits'], 1):.2f}x the hit tokens of `round_robin` and "
        f"{p['hits'] / max(ll['hits'], 1):.2f}x those of `least_loaded`; median TTFT "
        f"{p['ttft']:.1f} ms against {rr['ttft']:.1f} and {ll['ttft']:.1f} ms; "
        f"{p['rate']:.0f} req/s against {rr['rate']:.0f} and {ll['rate']:.0f}."
    )


def margin_summary(uniform: dict[str, Figures], skewed: dict[str, Figures]) -> str:
    """What this run says about the margin: hits on the uniform workload against balance
    (median TTFT) on the skewed one, where a large margin piles the hot prefix on one replica."""
    margins = sorted(float(k.split()[1]) for k in uniform if k.startswith("margin "))
    hits = [uniform[f"margin {m:g}"]["hits"] for m in margins]
    ttfts = [skewed[f"margin {m:g}"]["ttft"] for m in margins]
    best = min(ttfts)
    balanced = [m for m, t in zip(margins, ttfts, strict=True) if t <= 1.25 * best]
    return (
        f"In this run, the uniform workload's hit tokens go from {hits[0]:,} at margin "
        f"{margins[0]:g} to {max(hits):,} (at {margins[hits.index(max(hits))]:g}); on the skewed "
        f"one the median TTFT stays within 25% of the best ({best:.1f} ms) at margins "
        f"{', '.join(f'{m:g}' for m in balanced)} and reaches {max(ttfts):.1f} ms (at "
        f"{margins[ttfts.index(max(ttfts))]:g}). The default is {DEFAULT_PREFIX_LOAD_MARGIN:g}."
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    header = ["policy", "margin", "completed", "failed", "hit tokens", "hit rate",
              "TTFT p50 ms", "TTFT p90 ms", "e2e p50 ms", "req/s", "output tok/s"]  # fmt: skip
    tables, summaries, by_workload = [], [], []
    for name, workload in workloads(args).items():
        rows, figures = policy_rows(args, workload)
        tables.append(f"**{name}**, {workload.num_requests} requests:\n\n"
                      f"{markdown_table(header, rows)}")  # fmt: skip
        summaries.append(summary(name, figures))
        by_workload.append(figures)
    latency = added_latency(args)
    ids_added = latency[1][3] - latency[0][3]
    text_added = latency[3][3] - latency[2][3]
    body = f"""{run_header("cpu")}
Two engines (`python -m frontend serve --model {args.model.name} --device cpu
--num-kv-blocks {args.num_kv_blocks} --max-num-seqs {args.max_num_seqs}`, one torch thread
each) and `python -m router serve
--policy POLICY --prefix-load-margin M --backend A --backend B`, each in its own process, the
client here: all on the same 2 shared cores. Workloads: {args.num_prefixes} prefixes of
{args.prefix_len} random tokens, each request a prefix + 8 tokens of its own, shuffled,
{args.concurrency} streams in flight, {args.max_tokens} output tokens, greedy; *uniform*:
{args.per_prefix} requests per prefix; *skewed*: {args.hot_share:.0%} of the requests on one
prefix, the rest spread over the others. Each engine's cache holds {args.num_kv_blocks} blocks
of 16 tokens: about half the prefixes. "hit tokens" are the prompt tokens the two engines'
prefix caches served (GetLoad). Fresh engines for every row.

{(chr(10) * 2).join(tables)}

Added latency: {args.latency_requests} requests of 32 token ids (or a short text) and 1 output
token, one at a time, to one engine directly and through a router (`--policy prefix`) in front
of it. Through the router a text prompt is tokenized by a backend first (to hash its blocks).

{markdown_table(["path", "requests", "TTFT p50 ms", "e2e p50 ms"], latency)}

{chr(10).join(summaries)}
- The router adds {ids_added:.2f} ms (median) to a request with token ids and {text_added:.2f}
  ms to one with text, for which it asks a backend to tokenize the prompt first: two more
  gRPC hops on loopback and the relay of each message, in Python on the same shared cores.

Margins (a share of a replica's `max_num_seqs`, {args.max_num_seqs} here): with no margin the
prefix policy is least_loaded in all but ties, and gets its hit rate; with a margin above what
the load can differ by ({args.concurrency / args.max_num_seqs:g} here) it never falls back,
which gets the most hits and, when one prefix is hot, piles that prefix's requests on one
replica while the other idles. {margin_summary(*by_workload)}

What limits these figures: both engines, the router and the client share 2 cores with other
work (load above), so a request moved to the idle replica also moves onto cores the busy one
uses, and short runs move by 10-20% from run to run; with one GPU per replica the cost of
piling up, and so the case for the margin, is larger.

Peers: `round_robin` is what a plain gRPC load balancer does (a Kubernetes Service, Envoy's
round robin) and `least_loaded` what a least-request balancer does (Envoy's least_request,
SGLang router's shortest-queue policy); both ran in the same run on the same engines. SGLang's
cache-aware router (`sglang-router`) fronts SGLang's HTTP API, not these gRPC engines, so it
was not run here.
"""
    publish(SECTION, body, not args.no_write)


