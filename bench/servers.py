"""Loom served: benchmarks against `python -m frontend serve` in its own process, as it would
be deployed, with `python -m loadtest` as the client; and the server process the router and
reliability benchmarks start too.

online: `python -m loadtest` at rising request rates until the server saturates: the
throughput-latency curve, and the highest rate whose p99 TTFT and p99 TPOT stay within the
goals. `--target HOST:PORT` measures a server you started yourself.

fairness: two tenants, one overloading the server: tenant a sends several times tenant b's
rate, more than the server completes, under `--queue-policy fcfs`, `priority` and `fair` in
turn. Per tenant: TTFT p50/p99 and the share of the tokens served while both were sending.
The tenants file is the same for the three runs: both weigh 1, b has priority 0 and a
priority 1, so `priority` favours b because the operator said so, and `fair` because a
already has more than its share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import (
    DEFAULT_MODEL_DIR,
    REPO_ROOT,
    STORIES_DIR,
    bench_parser,
    log,
    markdown_table,
    publish,
    run_header,
)
from loompb import serving_pb2, serving_pb2_grpc
from serving.tenants import hash_key

LISTENING = re.compile(r"listening on \S+:(\d+)")


class ServeProcess:
    """A Loom server (`python -m frontend serve`, or `router serve`) in its own process, its
    log in a file; `target` once it says it listens. Give it `--port 0`."""

    def __init__(self, argv: list[str], **env: str) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
        environ = {**os.environ, **env}
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, stderr=self.log, text=True, env=environ)
        deadline = time.monotonic() + 300
        while (found := LISTENING.search(Path(self.log.name).read_text())) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{' '.join(argv[:4])} did not start:\n{self.log_text()}")
            time.sleep(0.05)  # polling a process start-up, not synchronising threads
        self.target = f"127.0.0.1:{found.group(1)}"

    def log_text(self) -> str:
        return Path(self.log.name).read_text()

    def stop(self, graceful: bool = True) -> None:
        if self.proc.poll() is None:
            self.proc.terminate() if graceful else self.proc.kill()
        self.proc.wait(timeout=60)
        self.log.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_argv(model: Path, *flags: str, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "frontend", "serve", "--model", str(model), "--port", "0",
            "--device", device, *flags]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_info(target: str, timeout: float = 60) -> serving_pb2.ModelInfo:
    with grpc.insecure_channel(target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        return stub.GetModelInfo(serving_pb2.GetModelInfoRequest(), timeout=timeout)


# ---- online ------------------------------------------------------------------------------

ONLINE_SECTION = "Online serving: throughput-latency curve"
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


def run_loadtest(target: str, rate: float, num_prompts: int, seed: int, args) -> dict:
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


def online(argv: list[str] | None = None) -> None:
    p = bench_parser("online", "a served model's throughput-latency curve")
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
    args = p.parse_args(argv)
    rows, within_goals, offered, completed, missed = [], None, [], [], []
    started = time.monotonic()
    server = None if args.target else ServeProcess(serve_argv(args.model, device=args.device))
    target = args.target or server.target
    try:
        info = model_info(target)
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
            log(f"rate {rate:g}: {achieved:.2f} req/s, p99 TTFT {r['p99_ttft_ms']:.0f} ms, "
                f"p99 TPOT {r['p99_tpot_ms']:.0f} ms")  # fmt: skip
            if ok:
                within_goals = rate
            else:
                missed.append(rate)
            offered.append(rate)
            completed.append(achieved)
    finally:
        if server is not None:
            server.stop()
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
    publish(ONLINE_SECTION, body, not args.no_write)


# ---- fairness ----------------------------------------------------------------------------

FAIRNESS_SECTION = "Multi-tenant overload: fcfs, priority and fair share"
POLICIES = ("fcfs", "priority", "fair")
KEYS = {"a": "bench-key-a", "b": "bench-key-b"}


def tenants_file(directory: Path) -> Path:
    path = directory / "tenants.toml"
    path.write_text(
        "".join(
            f'[tenants.{name}]\napi_key_sha256 = ["{hash_key(key)}"]\npriority = {priority}\n\n'
            for (name, key), priority in zip(KEYS.items(), (1, 0), strict=True)
        )
    )
    return path


def fairness_loadtest(target: str, args: argparse.Namespace, path: Path) -> dict:
    num_prompts = math.ceil((args.rate_a + args.rate_b) * args.seconds)
    command = [
        sys.executable, "-m", "loadtest", "--target", target, "--no-progress",
        "--num-prompts", str(num_prompts), "--input-len", str(args.input_len),
        "--output-len", str(args.output_len), "--seed", str(args.seed),
        "--tenant", f"a:{KEYS['a']}:{args.rate_a:g}", "--tenant", f"b:{KEYS['b']}:{args.rate_b:g}",
        "--save-result", str(path),
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads(path.read_text())


def shares_while_sending(result: dict) -> dict[str, float]:
    """Each tenant's share of the tokens that reached the client before the last request was
    sent: the messages of a request arrive at start + ttft + its gaps, one token each (one per
    engine step), so they are counted where they fall."""
    end = max(result["start_times"])
    counts = {tenant: 0 for tenant in set(result["tenants"])}
    for start, ttft, itls, status, tenant in zip(
        result["start_times"], result["ttfts"], result["itls"], result["statuses"],
        result["tenants"], strict=True,
    ):  # fmt: skip
        if status != "OK":
            continue
        t = start + ttft
        counts[tenant] += t <= end
        for gap in itls:
            t += gap
            counts[tenant] += t <= end
    total = sum(counts.values()) or 1
    return {tenant: n / total for tenant, n in counts.items()}


def fairness(argv: list[str] | None = None) -> None:
    p = bench_parser("fairness", "two tenants, one overloading: fcfs, priority, fair")
    p.add_argument("--model", type=Path, default=STORIES_DIR)
    p.add_argument("--max-num-seqs", type=int, default=4, help="small, so a saturates it")
    # About twice what the engine completes on a quiet 2-core machine: a's queue builds up.
    p.add_argument("--rate-a", type=float, default=64.0, help="tenant a's requests/s")
    p.add_argument("--rate-b", type=float, default=8.0, help="tenant b's requests/s")
    p.add_argument("--seconds", type=float, default=15.0, help="how long both send")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tenants = tenants_file(Path(tmp))
        for policy in POLICIES:
            flags = ["--queue-policy", policy, "--max-num-seqs", str(args.max_num_seqs),
                     "--tenants", str(tenants)]  # fmt: skip
            with ServeProcess(serve_argv(args.model, *flags)) as server:
                result = fairness_loadtest(server.target, args, Path(tmp) / f"{policy}.json")
            shares = shares_while_sending(result)
            per = result["per_tenant"]
            for tenant in ("a", "b"):
                t = per[tenant]
                rows.append([
                    policy, tenant, t["completed"], t["failed"], t["median_ttft_ms"],
                    t["p99_ttft_ms"], t["median_itl_ms"], t["p99_itl_ms"], shares[tenant],
                    t["output_token_share"], result["duration"], result["output_throughput"],
                ])  # fmt: skip
            log(f"{policy}: b TTFT p50 {per['b']['median_ttft_ms']:.0f} ms, a "
                f"{per['a']['median_ttft_ms']:.0f} ms")  # fmt: skip
    header = ["policy", "tenant", "completed", "failed", "TTFT p50 ms", "TTFT p99 ms",
              "ITL p50 ms", "ITL p99 ms", "token share while sending",
              "token share overall", "run s", "run output tok/s"]  # fmt: skip
    offered = args.rate_a / (args.rate_a + args.rate_b)
    body = f"""{run_header("cpu")}
Server: `python -m frontend serve --model {args.model.name} --device cpu --max-num-seqs
{args.max_num_seqs} --tenants FILE --queue-policy POLICY` in its own process, one per policy;
client `python -m loadtest --tenant a:KEY:{args.rate_a:g} --tenant b:KEY:{args.rate_b:g}
--num-prompts {math.ceil((args.rate_a + args.rate_b) * args.seconds)} --input-len
{args.input_len} --output-len {args.output_len} --seed {args.seed}` on the same machine and
cores: Poisson arrivals for about {args.seconds:g} s, a at {args.rate_a / args.rate_b:g}x b's
rate ({offered:.0%} of the requests), random token-id prompts, EOS ignored. The tenants file:
both weight 1; b priority 0, a priority 1.

{markdown_table(header, rows)}

"token share while sending" counts the tokens that reached the client before the last request
was sent (one per message); "overall" counts every token, the drain after the arrivals stop
included, so it is the offered mix whatever the policy. "run s" is first send to last answer
and "run output tok/s" the server's throughput over it (both tenants): the offered load is
more than the server completes, so a's queue, and a's TTFT, grow with the gap between the two,
which the other work on these shared cores moves from run to run.

Peers: vLLM schedules by `fcfs` or `priority`, which the first two policies reproduce in this
engine on the same load; no peer engine ships fair share across tenants (VTC exists as the
paper's research code and in gateways), so there is no peer to run for `fair`.
"""
    publish(FAIRNESS_SECTION, body, not args.no_write)
