"""Overload shedding and drain, on a real `serve` process.

    python -m bench reliability overload   # admitted TTFT without and with a flood
    python -m bench reliability drain      # SIGTERM (and a second one) with streams open

overload: a steady tenant keeps `--concurrency` streams in flight; then the same again while a
flood tenant sends as fast as `--flood-concurrency` callers can, beyond its
max_concurrent_requests quota and the server's --max-queued-requests. The flood's refusals are
counted by status; the steady tenant's TTFT is compared.

drain: `--streams` greedy streams open, SIGTERM: how long until health is NOT_SERVING, until
the last stream ends and until the process exits, and how the streams ended. Then the same
with a second SIGTERM once the first took effect.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.common import STORIES_DIR, bench_parser, markdown_table, publish, run_header
from bench.servers import ServeProcess, serve_argv
from loadtest.metrics import percentile
from loompb import serving_pb2, serving_pb2_grpc
from serving.tenants import hash_key

TENANTS = f"""\
[tenants.steady]
api_key_sha256 = ["{hash_key("key-steady")}"]

[tenants.flood]
api_key_sha256 = ["{hash_key("key-flood")}"]
max_concurrent_requests = 4
"""
FLOOD_QUOTA = 4
SHED = "RESOURCE_EXHAUSTED"
# Spawned, not forked: a forked child would inherit this process's gRPC state.
PROCESSES = multiprocessing.get_context("spawn")
STEADY = (("authorization", "Bearer key-steady"),)
FLOOD = (("authorization", "Bearer key-flood"),)


def request(i: int, max_tokens: int) -> serving_pb2.GenerateRequest:
    sampling = serving_pb2.SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return serving_pb2.GenerateRequest(prompt=f"Once upon a time, story {i}", sampling=sampling)


async def stream_ttft(stub, i: int, max_tokens: int, metadata) -> tuple[float | None, str]:
    start = time.perf_counter()
    ttft = None
    try:
        async for message in stub.GenerateStream(request(i, max_tokens), metadata=metadata):
            if ttft is None and message.token_ids:
                ttft = time.perf_counter() - start
    except grpc.aio.AioRpcError as exc:
        return ttft, exc.code().name
    return ttft, "OK"


async def steady_load(stub, num: int, concurrency: int, max_tokens: int) -> list[float]:
    limit = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[float | None, str]:
        async with limit:
            return await stream_ttft(stub, i, max_tokens, STEADY)

    results = await asyncio.gather(*(one(i) for i in range(num)))
    assert all(status == "OK" for _, status in results), Counter(s for _, s in results)
    return [ttft for ttft, _ in results if ttft is not None]


async def flood_load(target: str, stop, concurrency: int) -> Counter[str]:
    statuses: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)

        async def caller(k: int) -> None:
            i = 0
            while not stop.is_set():
                _, status = await stream_ttft(stub, 10_000 * k + i, 32, FLOOD)
                statuses[status] += 1
                i += 1

        await asyncio.gather(*(caller(k) for k in range(concurrency)))
    return statuses


def flood_process(target: str, stop, concurrency: int, results) -> None:
    """The flood in a process of its own: its client work does not delay the steady
    client's event loop (it still shares the machine's cores)."""
    results.put(asyncio.run(flood_load(target, stop, concurrency)))


async def overload_phases(target: str, args: argparse.Namespace) -> list[list[object]]:
    rows = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        await steady_load(stub, 16, args.concurrency, args.max_tokens)  # warm-up
        # Alone; beside as many flood callers as its quota admits (the cost of the work let
        # in); beside the whole flood (that work plus the cost of refusing the rest).
        for callers in (0, FLOOD_QUOTA, args.flood_concurrency):
            flooded = callers > 0
            stop, results = PROCESSES.Event(), PROCESSES.Queue()
            flood = PROCESSES.Process(target=flood_process, args=(target, stop, callers, results))
            if flooded:
                flood.start()
                await asyncio.sleep(1.0)  # the flood under way before the steady load starts
            start = time.perf_counter()
            ttfts = await steady_load(stub, args.num_requests, args.concurrency, args.max_tokens)
            seconds = time.perf_counter() - start
            stop.set()
            statuses = results.get(timeout=60) if flooded else Counter()
            if flooded:
                flood.join(30)
            shed = statuses[SHED]
            others = [f"{k} {v}" for k, v in statuses.items() if k not in ("OK", SHED)]
            rows.append([
                f"beside {callers} flood callers" if flooded else "alone", len(ttfts),
                percentile(ttfts, 50) * 1000, percentile(ttfts, 99) * 1000,
                sum(statuses.values()) / (seconds + 1.0) if flooded else 0.0, shed,
                statuses["OK"], ", ".join(others) or "none",
            ])  # fmt: skip
    return rows


def overload(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        tenants = Path(tmp) / "tenants.toml"
        tenants.write_text(TENANTS)
        flags = ["--tenants", str(tenants), "--max-queued-requests", str(args.max_queued)]
        flags += ["--max-num-seqs", str(args.max_num_seqs)]
        serve = ServeProcess(serve_argv(STORIES_DIR, *flags))
        try:
            rows = asyncio.run(overload_phases(serve.target, args))
        finally:
            serve.stop(graceful=False)
    header = ["steady tenant", "requests", "TTFT p50 ms", "TTFT p99 ms", "flood calls/s",
              "flood shed (RESOURCE_EXHAUSTED)", "flood admitted", "flood other"]  # fmt: skip
    return (
        f"Server: `python -m frontend serve --device cpu --tenants FILE {' '.join(flags[2:])}` "
        "(stories260K),"
        " tenants FILE: `steady` unlimited, `flood` max_concurrent_requests 4. Steady: "
        f"{args.num_requests} greedy streams of {args.max_tokens} tokens, {args.concurrency} in "
        f"flight; flood: {args.flood_concurrency} callers sending 32-token streams back to back."
        f"\n\n{markdown_table(header, rows)}\n"
    )


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        return check(health_pb2.HealthCheckRequest(service=""), timeout=5).status


async def drain_once(args: argparse.Namespace, second_signal: bool) -> list[object]:
    serve = ServeProcess(serve_argv(STORIES_DIR, "--shutdown-timeout", "60"))
    try:
        async with grpc.aio.insecure_channel(serve.target) as channel:
            stub = serving_pb2_grpc.GenerationStub(channel)
            first = [asyncio.Event() for _ in range(args.streams)]

            async def one(i: int) -> tuple[str, int, float]:
                tokens, status = 0, "OK"
                try:
                    async for message in stub.GenerateStream(request(i, args.max_tokens)):
                        tokens += len(message.token_ids)
                        first[i].set()
                except grpc.aio.AioRpcError as exc:
                    status = exc.code().name
                first[i].set()
                return status, tokens, time.perf_counter()

            tasks = [asyncio.ensure_future(one(i)) for i in range(args.streams)]
            await asyncio.gather(*(event.wait() for event in first))
            sent = time.perf_counter()
            serve.proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            while await loop.run_in_executor(None, health, serve.target) != 2:  # NOT_SERVING
                await asyncio.sleep(0.001)  # polling the process we measure
            not_serving = time.perf_counter() - sent
            if second_signal:
                serve.proc.send_signal(signal.SIGTERM)
            ends = await asyncio.gather(*tasks)
        code = await loop.run_in_executor(None, serve.proc.wait, 60)
        exited = time.perf_counter() - sent
    finally:
        serve.stop(graceful=False)
    statuses = Counter(status for status, _, _ in ends)
    complete = sum(1 for s, tokens, _ in ends if s == "OK" and tokens == args.max_tokens)
    last_end = max(at for _, _, at in ends) - sent
    return [
        "SIGTERM, then a second one" if second_signal else "SIGTERM", args.streams,
        not_serving * 1000, last_end * 1000, exited * 1000, complete,
        ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())), code,
    ]  # fmt: skip


def drain(args: argparse.Namespace) -> str:
    rows = [asyncio.run(drain_once(args, second)) for second in (False, True)]
    header = ["signals", "streams open", "to NOT_SERVING ms", "to the last stream's end ms",
              "to exit ms", f"complete ({args.max_tokens} tok)", "ended", "exit code"]  # fmt: skip
    return (
        f"Server: `python -m frontend serve --device cpu --shutdown-timeout 60` (stories260K);"
        f" {args.streams} greedy streams of {args.max_tokens} tokens, each past its first token "
        "when the signal is sent. Times from the first SIGTERM.\n\n"
        f"{markdown_table(header, rows)}\n"
    )


def main(argv: list[str] | None = None) -> None:
    p = bench_parser("reliability", __doc__)
    p.add_argument("what", choices=["overload", "drain"])
    p.add_argument("--num-requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--flood-concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-queued", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--write", action="store_true", help="record the result in BENCHMARKS.md")
    args = p.parse_args(argv)
    body = overload(args) if args.what == "overload" else drain(args)
    title = f"Reliability: {'overload shedding' if args.what == 'overload' else 'drain on SIGTERM'}"
    publish(title, f"{run_header('cpu')}\n{body}", args.write)


if __name__ == "__main__":
    main()
