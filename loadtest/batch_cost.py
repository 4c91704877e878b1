"""What one `/v1/completions` call with many prompts costs a running server and the tenants
beside it: `python -m loadtest.batch_cost`. How `--max-prompts-per-request`'s default was
chosen (README, Reliability).

For each batch size it posts one call of that many prompts as tenant `batch`, and once the
server holds all of them, tenant `probe` sends one small request after another until the
batch is answered; it reports the batch's wall time, the probe's latencies against the probe
alone, and the server's resident memory before and at its peak
(`process_resident_memory_bytes` from `--metrics-url`). Run it against a server on this
machine without keys (tenants by `x-loom-tenant`), its cap lifted to see what it bounds:

    python -m frontend serve --http-port 8000 --metrics-port 9090 \
        --max-prompts-per-request 1000000 &
    python -m loadtest.batch_cost --base-url http://127.0.0.1:8000/v1 \\
        --metrics-url http://127.0.0.1:9090/metrics --sizes 1,16,64,256,1024,4096
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

from loadtest.http_client import HttpCall
from loadtest.server_metrics import fetch_gauges, fetch_text, parse_series

RSS = "process_resident_memory_bytes"


@dataclass(slots=True)
class BatchCost:
    size: int
    n: int
    status: int
    batch_s: float
    probe_alone_ms: float
    probe_ms: list[float] = field(default_factory=list)
    rss_before_mb: float = 0.0
    rss_peak_mb: float = 0.0


async def post(url: str, body: dict, tenant: str) -> int:
    async with HttpCall(url, body, [("x-loom-tenant", tenant)]) as call:
        status = await call.status()
        await call.body()
        return status


async def probe_once(url: str, max_tokens: int) -> float:
    body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    status = await post(url, body, "probe")
    if status != 200:
        raise RuntimeError(f"the probe request was answered {status}")
    return (time.perf_counter() - started) * 1e3


def queued(metrics_url: str) -> float:
    """Sequences running and waiting on the server."""
    return sum(fetch_gauges(metrics_url).values())


def rss_mb(metrics_url: str) -> float:
    return parse_series(fetch_text(metrics_url), (RSS,))[RSS] / 2**20


async def measure(args: argparse.Namespace, size: int, alone_ms: float) -> BatchCost:
    url = args.base_url.rstrip("/") + "/completions"
    rng = random.Random(size)
    # Distinct token-id prompts, so the prefix cache shares nothing between them.
    prompts = [[rng.randrange(3, 500) for _ in range(args.prompt_tokens)] for _ in range(size)]
    body = {"prompt": prompts, "max_tokens": args.max_tokens, "n": args.n, "temperature": 0}
    cost = BatchCost(size, args.n, 0, 0.0, alone_ms, rss_before_mb=rss_mb(args.metrics_url))
    cost.rss_peak_mb = cost.rss_before_mb
    done = asyncio.Event()

    async def probes() -> None:
        while not done.is_set():
            cost.probe_ms.append(await probe_once(url, args.max_tokens))
            cost.rss_peak_mb = max(cost.rss_peak_mb, rss_mb(args.metrics_url))

    started = time.perf_counter()
    batch = asyncio.ensure_future(post(url, body, "batch"))
    # The probes start once the whole batch is queued (or refused): they arrive behind it.
    while not batch.done() and queued(args.metrics_url) < size * args.n:
        await asyncio.sleep(0.005)
    prober = asyncio.ensure_future(probes())
    cost.status = await batch
    cost.batch_s = time.perf_counter() - started
    done.set()
    await prober
    return cost


def report(cost: BatchCost) -> str:
    probes = cost.probe_ms
    median = statistics.median(probes) if probes else float("nan")
    worst = max(probes) if probes else float("nan")
    return (
        f"{cost.size:>6} prompts x n {cost.n}: {cost.status}  batch {cost.batch_s:7.2f} s  "
        f"probe median {median:8.1f} ms, max {worst:8.1f} ms ({len(probes)} probes; alone "
        f"{cost.probe_alone_ms:.1f} ms)  RSS {cost.rss_before_mb:.0f} -> {cost.rss_peak_mb:.0f} MB"
    )


async def run(args: argparse.Namespace) -> int:
    url = args.base_url.rstrip("/") + "/completions"
    await probe_once(url, args.max_tokens)  # warm: the first request pays for later ones
    alone = statistics.median([await probe_once(url, args.max_tokens) for _ in range(10)])
    for size in args.sizes:
        print(report(await measure(args, size, alone)), flush=True)
    return 0


def sizes(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.batch_cost", description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:9090/metrics")
    parser.add_argument("--sizes", type=sizes, default=[1, 16, 64, 256, 1024, 4096])
    parser.add_argument("--n", type=int, default=1, help="sequences per prompt")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
