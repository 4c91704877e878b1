"""Benchmark e: online serving. `python -m loadtest` against a running Loom server at rising
request rates until it saturates: the throughput-latency curve, and the highest rate whose
p99 TTFT and p99 TPOT stay within the goals.

    python -m bench.bench_online                          # starts a server on the 60M model
    python -m bench.bench_online --rates 1 2 --seconds-per-rate 10 --no-write    # quick
    python -m bench.bench_online --target HOST:PORT       # a server you started yourself
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.common import DEFAULT_MODEL_DIR, REPO_ROOT, markdown_table, run_header, write_section
from loompb import serving_pb2, serving_pb2_grpc

SECTION = "Online serving: throughput-latency curve"
# Saturation is read off the whole curve, not from one rate: short Poisson runs wobble by
# 10-20% in the rate they send and complete. The server is saturated once the completed rate
# stops rising with the offered one; it plateaus at its peak.
PLATEAU = 0.90  # rates completing at least this share of the peak are on the plateau
STILL_RISING = 1.10  # the last rate completed this much more than the one before


def describe_saturation(offered: list[float], achieved: list[float]) -> str:
    peak = max(achieved)
    if len(achieved) < 2 or achieved[-1] >= STILL_RISING * achieved[-2]:
        return (
            f"the completed rate was still rising at the highest rate tried ({achieved[-1]:.2f} "
            "req/s): not saturated within these rates"
        )
    first = next(o for o, a in zip(offered, achieved, strict=True) if a >= PLATEAU * peak)
    return (
        f"saturation: the completed rate plateaus at about {peak:.2f} req/s, reached from "
        f"{first:g} req/s offered (within {1 - PLATEAU:.0%} of the peak); above it latency "
        "climbs while throughput does not"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--device", default="cpu")
    p.add_argument("--target", help="use this running server instead of starting one")
    p.add_argument(
        "--rates", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1, 1.25, 1.5, 2, 3, 4]
    )
    p.add_argument(
        "--max-minutes", type=float, default=7.0, help="start no new rate after this long"
    )
    p.add_argument("--seconds-per-rate", type=float, default=40.0, help="arrivals per rate")
    p.add_argument("--min-prompts", type=int, default=16, help="requests per rate at least")
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--range-ratio", type=float, default=0.5)
    p.add_argument("--ttft-goal-ms", type=float, default=1000.0, help="p99 TTFT goal")
    p.add_argument("--tpot-goal-ms", type=float, default=150.0, help="p99 TPOT goal")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(target: str, timeout: float) -> serving_pb2.ModelInfo:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        stub = serving_pb2_grpc.GenerationStub(channel)
        return stub.GetModelInfo(serving_pb2.GetModelInfoRequest(), timeout=timeout)


@contextmanager
def loom_server(args: argparse.Namespace) -> Iterator[str]:
    """`python -m frontend serve` in its own process, as it would be deployed."""
    if args.target:
        yield args.target
        return
    port = free_port()
    command = [sys.executable, "-m", "frontend", "serve", "--model", str(args.model),
               "--port", str(port), "--device", args.device, "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO_ROOT)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=60)


def run_loadtest(
    target: str, rate: float, num_prompts: int, seed: int, args: argparse.Namespace
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "result.json"
        command = [
            sys.executable, "-m", "loadtest", "--target", target, "--no-progress",
            "--num-prompts", str(num_prompts), "--request-rate", str(rate),
            "--input-len", str(args.input_len), "--output-len", str(args.output_len),
            "--range-ratio", str(args.range_ratio), "--seed", str(seed),
            "--goodput", f"ttft:{args.ttft_goal_ms:g}", f"tpot:{args.tpot_goal_ms:g}",
            "--save-result", str(path),
        ]  # fmt: skip
        subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
        return json.loads(path.read_text())


def main() -> None:
    args = parse_args()
    rows, within_goals, offered, completed, missed = [], None, [], [], []
    started = time.monotonic()
    with loom_server(args) as target:
        info = wait_ready(target, timeout=300)
        run_loadtest(target, math.inf, 4, args.seed + 1000, args)  # warm-up
        # Each rate draws its own prompts: repeating them would hit the prefix cache.
        for index, rate in enumerate(sorted(args.rates)):
            if time.monotonic() - started > args.max_minutes * 60:
                break
            num_prompts = max(args.min_prompts, math.ceil(rate * args.seconds_per_rate))
            r = run_loadtest(target, rate, num_prompts, args.seed + index, args)
            achieved = r["request_throughput"]
            starts = r["start_times"]
            sent = (len(starts) - 1) / max(starts[-1] - starts[0], 1e-9)
            ok = r["p99_ttft_ms"] <= args.ttft_goal_ms and r["p99_tpot_ms"] <= args.tpot_goal_ms
            ok = ok and r["failed"] == 0
            rows.append([
                f"{rate:g}", num_prompts, sent, achieved, r["output_throughput"],
                r["median_ttft_ms"], r["p99_ttft_ms"], r["median_tpot_ms"], r["p99_tpot_ms"],
                r["p99_itl_ms"], r["request_goodput"], r["failed"],
                "yes" if ok else "no",
            ])  # fmt: skip
            print(f"rate {rate:g}: {achieved:.2f} req/s, p99 TTFT {r['p99_ttft_ms']:.0f} ms, "
                  f"p99 TPOT {r['p99_tpot_ms']:.0f} ms", file=sys.stderr, flush=True)  # fmt: skip
            if ok:
                within_goals = rate
            else:
                missed.append(rate)
            offered.append(rate)
            completed.append(achieved)
    header = ["offered req/s", "requests", "sent req/s", "achieved req/s", "output tok/s",
              "median TTFT ms",
              "p99 TTFT ms", "median TPOT ms", "p99 TPOT ms", "p99 ITL ms", "goodput req/s",
              "failed", "within goals"]  # fmt: skip
    saturation = describe_saturation(offered, completed)
    best = f"{within_goals:g} req/s" if within_goals is not None else "none of the rates tried"
    lower_misses = [f"{r:g}" for r in missed if within_goals is not None and r < within_goals]
    if lower_misses:
        best += (
            f" (though {', '.join(lower_misses)} req/s missed: a p99 over a few dozen requests "
            "is close to their maximum, so one slow request decides it)"
        )
    body = f"""{run_header(args.device)}
Server: `python -m frontend serve --model {args.model.name} --device {args.device}` in its own
process (default engine settings; model {info.model_name}, KV cache
{info.kv_cache_capacity_tokens} tokens), client `python -m loadtest` on the same machine and
cores. Workload per rate: random token-id prompts of {args.input_len} tokens and outputs of
{args.output_len} tokens, both +-{args.range_ratio:.0%} uniform, greedy, EOS ignored, Poisson
arrivals for about {args.seconds_per_rate:g} s (at least {args.min_prompts} requests), seed
{args.seed} + the rate's index (fresh prompts at each rate, so none hit the prefix cache).

{markdown_table(header, rows)}

"sent" is the rate the Poisson draw actually produced; "achieved" is completed requests over
the run's duration, which includes draining the last requests.

Goals (stated for this 2-core CPU and model): p99 TTFT <= {args.ttft_goal_ms:g} ms and p99
TPOT <= {args.tpot_goal_ms:g} ms, no failed request. Highest rate within them: **{best}**;
{saturation}.
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
