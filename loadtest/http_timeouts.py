"""How a running server's HTTP API treats slow and idle connections:
`python -m loadtest.http_timeouts`. How `--http-header-timeout` and `--http-keep-alive-timeout`
were chosen (README, Reliability).

- `slow-headers`: opens `--connections` connections that each send a request's head one byte
  every `--byte-interval` seconds, and reports how long the server kept them, what they cost
  it in resident memory (`--metrics-url`), and a small request's latency meanwhile.
- `idle-reuse`: sends a request, waits `gap` seconds, then sends another on the same
  connection, as a client's connection pool does with a connection idle that long; reports
  how often the server had closed it (the second request fails) for each gap.

    python -m frontend serve --http-port 8000 --metrics-port 9090 &
    python -m loadtest.http_timeouts slow-headers --connections 200
    python -m loadtest.http_timeouts idle-reuse --gaps 4.9,4.99,5.5,9.9 --tries 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from urllib.parse import urlsplit

from loadtest.batch_cost import probe_once, rss_mb

HEAD = (
    b"POST /v1/completions HTTP/1.1\r\nhost: loom\r\ncontent-type: application/json\r\n"
    b"content-length: 2\r\n\r\n{}"
)
HEALTH = b"GET /health HTTP/1.1\r\nhost: loom\r\n\r\n"


def address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    return parts.hostname or "127.0.0.1", parts.port or 80


async def trickle(host: str, port: int, interval: float, limit: float) -> float:
    """Send HEAD a byte at a time; the seconds until the server closed the connection
    (`limit` when it never did within it)."""
    reader, writer = await asyncio.open_connection(host, port)
    started = time.perf_counter()
    try:
        for byte in HEAD:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(1), interval) == b"":
                    return time.perf_counter() - started  # closed by the server
            except asyncio.TimeoutError:
                pass  # still open: the next byte
            except ConnectionError:
                return time.perf_counter() - started
            if time.perf_counter() - started > limit:
                break
        return limit
    finally:
        writer.close()


async def slow_headers(args: argparse.Namespace) -> None:
    host, port = address(args.base_url)
    url = args.base_url.rstrip("/") + "/completions"
    await probe_once(url, 4)  # warm: the first request pays for what later ones reuse
    before = rss_mb(args.metrics_url)
    alone = await probe_once(url, 4)
    held = [
        asyncio.ensure_future(trickle(host, port, args.byte_interval, args.limit))
        for _ in range(args.connections)
    ]
    await asyncio.sleep(min(args.limit, 5.0))  # all of them open and trickling
    during = await probe_once(url, 4)
    peak = rss_mb(args.metrics_url)
    kept = await asyncio.gather(*held)
    print(
        f"{args.connections} connections, a head byte every {args.byte_interval:g} s: kept "
        f"min {min(kept):.1f} s, median {statistics.median(kept):.1f} s, max {max(kept):.1f} s "
        f"(limit {args.limit:g} s); RSS {before:.0f} -> {peak:.0f} MB "
        f"({(peak - before) * 1024 / args.connections:.1f} KB a connection); a request "
        f"{alone:.0f} ms alone, {during:.0f} ms among them"
    )


async def reuse_after(host: str, port: int, gap: float) -> bool:
    """Whether a second request, `gap` seconds after the first, got its answer."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(gap)
            writer.write(HEALTH)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        return True
    except (ConnectionError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def idle_reuse(args: argparse.Namespace) -> None:
    host, port = address(args.base_url)
    for gap in args.gaps:
        results = await asyncio.gather(*(reuse_after(host, port, gap) for _ in range(args.tries)))
        failed = results.count(False)
        print(f"reused after {gap:g} s idle: {failed} of {args.tries} failed", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.http_timeouts", description=__doc__)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--metrics-url", default="http://127.0.0.1:9090/metrics")
    commands = parser.add_subparsers(dest="command", required=True)
    slow = commands.add_parser("slow-headers")
    slow.add_argument("--connections", type=int, default=200)
    slow.add_argument("--byte-interval", type=float, default=1.0)
    slow.add_argument("--limit", type=float, default=60.0, help="stop watching after (s)")
    idle = commands.add_parser("idle-reuse")
    idle.add_argument("--gaps", type=lambda t: [float(g) for g in t.split(",")], default=[4.9])
    idle.add_argument("--tries", type=int, default=20)
    args = parser.parse_args(argv)
    asyncio.run(slow_headers(args) if args.command == "slow-headers" else idle_reuse(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
