"""Loom served: benchmarks against `python -m frontend serve` in its own process, as it would
be deployed, with `python -m loadtest` as the client; and the server process the router and
reliability benchmarks start too.

online: `python -m loadtest` at rising request rates until the server saturates: the
throughput-latency curve, and the highest rate whose p99 TTFT and p99 TPOT stay within the
goals. `--target HOST:PORT` measures a server you started yourself.

fairness: tenants under pressure, three scenarios (`python -m bench fairness SCENARIO`).
`overload`: tenant a sends 8 times tenant b's rate, together twice what the server completes
(measured first, at saturation), every request with a deadline drawn from 100 ms to 5 s; the
same arrivals under `fcfs`, `priority`, `fair` (each with and without preemption) and
`deadline`. `flood`: alpha keeps 16 streams of 480 tokens in flight on `--max-num-seqs 4`,
beta sends short requests one at a time; also with a KV cache that alpha's contexts fill.
`quantum`: the flood, and three tenants backlogged on four seats (one seat time-shared), for
several `--preemption-quantum` values. The tenants file: all weigh 1, b has priority 0 and
the others priority 1, so `priority` favours b because the operator said so, and `fair`
because a already has more than its share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
from loadtest.server_metrics import fetch_text
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

KEYS = {"a": "bench-key-a", "b": "bench-key-b", "c": "bench-key-c"}
PRIORITIES = {"a": 1, "b": 0, "c": 1}  # b is the one the operator favours under `priority`
DEADLINES_MS = "100,250,500,1000,2500,5000"
# (label, --queue-policy, extra serve flags)
OVERLOAD_POLICIES = [
    ("fcfs", "fcfs", []),
    ("priority", "priority", ["--no-policy-preemption"]),
    ("priority + preemption", "priority", []),
    ("fair", "fair", ["--no-policy-preemption"]),
    ("fair + preemption", "fair", []),
    ("deadline", "deadline", []),
]
FLOOD_POLICIES = [
    ("fcfs", "fcfs", []),
    ("fair", "fair", ["--no-policy-preemption"]),
    ("fair + preemption", "fair", []),
]


def tenants_file(directory: Path) -> Path:
    path = directory / "tenants.toml"
    path.write_text(
        "".join(
            f'[tenants.{name}]\napi_key_sha256 = ["{hash_key(key)}"]\n'
            f"priority = {PRIORITIES[name]}\n\n"
            for name, key in KEYS.items()
        )
    )
    return path


@dataclass
class Server:
    target: str
    metrics_url: str
    pid: int

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """A series' samples: (labels, value)."""
        found = []
        for line in fetch_text(self.metrics_url).splitlines():
            if line.startswith(name + "{"):
                pairs = line[len(name) + 1 : line.index("}")].split(",")
                labels = dict(pair.split("=", 1) for pair in pairs)
                found.append(
                    ({k: v.strip('"') for k, v in labels.items()}, float(line.split()[-1]))
                )
        return found

    def preemptions(self, tenant: str) -> dict[str, int]:
        return {
            labels["cause"]: int(n)
            for labels, n in self.samples("loom:tenant_preemptions_total")
            if labels["tenant"] == tenant
        }

    def tokens(self, tenant: str) -> float:
        return sum(
            n
            for labels, n in self.samples("loom:generation_tokens_total")
            if labels["tenant"] == tenant
        )

    def waiting(self) -> float:
        return sum(n for _, n in self.samples("loom:num_requests_waiting"))

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process, every thread."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def loom_server(
    args: argparse.Namespace, policy: str, tenants: Path, extra: list[str]
) -> Iterator[Server]:
    metrics_port = free_port()
    flags = ["--metrics-port", str(metrics_port), "--num-threads", str(args.num_threads),
             "--queue-policy", policy, "--max-num-seqs", str(args.max_num_seqs), "--tenants",
             str(tenants), *extra]  # fmt: skip
    with ServeProcess(serve_argv(args.model, *flags)) as server:
        yield Server(server.target, f"http://127.0.0.1:{metrics_port}/metrics", server.proc.pid)


def loadtest(target: str, path: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "loadtest", "--target", target, "--no-progress",
               "--save-result", str(path), *flags]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL)


def finished(process: subprocess.Popen, path: Path) -> dict:
    if process.wait() != 0:
        raise RuntimeError(f"loadtest failed: {process.args}")
    return json.loads(path.read_text())


# ---- overload --------------------------------------------------------------------------


def capacity(args: argparse.Namespace, tenants: Path, tmp: Path) -> float:
    """Requests/s the server completes at saturation (everything sent at once), under fcfs."""
    with loom_server(args, "fcfs", tenants, []) as server:
        run = loadtest(server.target, tmp / "capacity.json", "--api-key", KEYS["a"],
                       "--num-prompts", "400", "--input-len", str(args.input_len),
                       "--output-len", str(args.output_len), "--seed", str(args.seed))  # fmt: skip
        return finished(run, tmp / "capacity.json")["request_throughput"]


def shares_while_sending(result: dict) -> dict[str, float]:
    """Each tenant's share of the tokens that reached the client before the last request was
    sent (one token per message, counted where it fell)."""
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


def overload(args: argparse.Namespace, tmp: Path, tenants: Path) -> tuple[str, str]:
    seat_counts = [int(n) for n in args.seat_counts.split(",")]
    capacities = {}
    for seats in seat_counts:
        args.max_num_seqs = seats
        capacities[seats] = capacity(args, tenants, tmp)
    rows, notes = [], []
    for seats in seat_counts:
        args.max_num_seqs = seats
        # Twice what this seat count completes; the same arrivals for every policy.
        rate = args.overload * capacities[seats]
        rate_a, rate_b = rate * 8 / 9, rate / 9
        num_prompts = math.ceil(rate * args.seconds)
        flags = ["--tenant", f"a:{KEYS['a']}:{rate_a:.2f}", "--tenant",
                 f"b:{KEYS['b']}:{rate_b:.2f}", "--num-prompts", str(num_prompts),
                 "--input-len", str(args.input_len), "--output-len", str(args.output_len),
                 "--seed", str(args.seed), "--deadlines", args.deadlines]  # fmt: skip
        policies = [p for p in OVERLOAD_POLICIES if p[0] in args.policies.split(",")]
        runs: dict[str, list[tuple[dict, dict]]] = {label: [] for label, _, _ in policies}
        for _ in range(args.repeats):  # interleaved: the load of the shared cores drifts
            for label, policy, extra in policies:
                with loom_server(args, policy, tenants, extra) as server:
                    path = tmp / f"{label}.json"
                    result = finished(loadtest(server.target, path, *flags), path)
                    preempted = {t: server.preemptions(t) for t in ("a", "b")}
                runs[label].append((result, preempted))
                log(f"{seats} {label}: goodput {result['deadline_goodput']:.3f}")
        by_round = {label: [r["deadline_goodput"] for r, _ in done] for label, done in runs.items()}
        goodputs = {}
        for label, done in runs.items():
            # The run of median goodput stands for the policy (of an even count, the upper).
            done.sort(key=lambda run: run[0]["deadline_goodput"])
            result, preempted = done[len(done) // 2]
            goodputs[label] = result["deadline_goodput"]
            shares = shares_while_sending(result)
            for tenant in ("a", "b"):
                t = result["per_tenant"][tenant]
                rows.append([
                    seats, label, tenant, t["completed"], t["failed"], t["deadline_goodput"],
                    t["median_ttft_ms"], t["p99_ttft_ms"], shares[tenant],
                    sum(preempted[tenant].values()), result["deadline_goodput"],
                    result["output_throughput"],
                ])  # fmt: skip
        ratios = ", ".join(
            f"{label} {g / goodputs['fcfs']:.2f}x"
            for label, g in goodputs.items()
            if label != "fcfs"
        )
        each = "; ".join(
            f"{label} " + ", ".join(f"{g:.2f}" for g in rounds)
            for label, rounds in by_round.items()
        )
        fcfs_rounds = by_round["fcfs"]
        means = "; ".join(
            f"{label} {statistics.mean(rounds) / statistics.mean(fcfs_rounds):.2f}x (by round "
            + ", ".join(f"{g / f:.2f}" for g, f in zip(rounds, fcfs_rounds, strict=True))
            + ")"
            for label, rounds in by_round.items()
            if label != "fcfs"
        )
        notes.append(
            f"- `--max-num-seqs {seats}`: capacity {capacities[seats]:.1f} requests/s (400 sent "
            f"at once, fcfs); `loadtest --tenant a:KEY:{rate_a:.1f} --tenant b:KEY:{rate_b:.1f} "
            f"--num-prompts {num_prompts}`. Goodput of each round, in the order run: {each}. "
            f"Mean goodput against fcfs's: {means}. Median run against fcfs's median run (the "
            f"table's rows): {ratios}."
        )
    header = ["seats", "policy", "tenant", "completed", "failed", "deadlines met",
              "TTFT p50 ms", "TTFT p99 ms", "token share while sending", "preempted",
              "goodput (both)", "run output tok/s"]  # fmt: skip
    body = f"""{run_header("cpu")}
Server: `python -m frontend serve --model {args.model.name} --device cpu --num-threads
{args.num_threads} --max-num-seqs SEATS --tenants FILE --queue-policy POLICY
[--no-policy-preemption]` in its own process, one per row pair. The capacity of each seat
count is measured first under fcfs (400 requests sent at once); then the client `python -m
loadtest --tenant a:KEY:RATE_A --tenant b:KEY:RATE_B --num-prompts N --input-len
{args.input_len} --output-len {args.output_len} --seed {args.seed} --deadlines
{args.deadlines}` sends Poisson arrivals for about {args.seconds:g} s at {args.overload:g}x that
capacity, a at 8x b's rate, each request's `deadline_ms` drawn from
{args.deadlines.replace(",", ", ")} ms: the same arrivals and deadlines for every policy of a
seat count. Random token-id prompts, EOS ignored. The tenants file: both weight 1; b priority
0, a priority 1. {args.repeats} runs of each policy, interleaved; the table shows each
policy's run of median goodput.

{chr(10).join(notes)}

{markdown_table(header, rows)}

"deadlines met" is the share of the tenant's requests that completed within their deadline as
the client measured it (end to end), "goodput (both)" that share over both tenants; "failed"
are requests ended with DEADLINE_EXCEEDED: every policy ends a request once its deadline has
passed, `deadline` as soon as it cannot finish in time.

Peers: vLLM schedules by `fcfs` or `priority` (without preempting for priority), which those
rows reproduce in this engine on the same arrivals, with a client whose timeout cancels the
request at its deadline as Loom's server-side end does; no peer engine schedules by deadline or
ships fair share across tenants, so there is no peer to run for those rows.
"""
    return "Multi-tenant overload: fcfs, priority and fair share", body


# ---- flood and quantum ------------------------------------------------------------------


@dataclass
class FloodResult:
    beta_ttft_p50_ms: float
    beta_ttft_p99_ms: float
    alpha_tok_s: float  # while beta sent
    alpha_tok_per_cpu_s: float  # alpha's tokens per CPU-second of the server, meanwhile
    preempted: dict[str, int]


def beta_flags(args: argparse.Namespace) -> list[str]:
    num = max(4, math.ceil(args.beta_rate * 8))  # for about alpha's run
    return ["--api-key", KEYS["b"], "--request-rate", str(args.beta_rate), "--max-concurrency",
            "1", "--num-prompts", str(num), "--input-len", "16", "--output-len",
            str(args.beta_len), "--seed", str(args.seed + 1)]  # fmt: skip


def flood_once(
    args: argparse.Namespace, tmp: Path, tenants: Path, policy: str, extra: list[str], alpha: bool
) -> FloodResult:
    """alpha floods until beta has sent all its requests; alpha's rate is read from the
    server's own counters over beta's run."""
    with loom_server(args, policy, tenants, extra) as server:
        flood = None
        if alpha:
            flood = loadtest(
                server.target, tmp / "alpha.json", "--api-key", KEYS["a"], "--request-rate",
                "inf", "--max-concurrency", str(args.flood_streams), "--num-prompts", "100000",
                "--input-len", "16", "--output-len", str(args.flood_len), "--seed",
                str(args.seed),
            )  # fmt: skip
            until = time.monotonic() + 120
            while server.waiting() < args.flood_streams - args.max_num_seqs - 2:
                if time.monotonic() > until:
                    raise RuntimeError("alpha never filled the queue")
                time.sleep(0.05)  # a bench polling the server's gauge, not a test
        start = (time.monotonic(), server.cpu_seconds(), server.tokens("a"))
        beta = finished(
            loadtest(server.target, tmp / "beta.json", *beta_flags(args)), tmp / "beta.json"
        )
        end = (time.monotonic(), server.cpu_seconds(), server.tokens("a"))
        if flood is not None:
            flood.terminate()
            flood.wait()
        preempted = server.preemptions("a")
    tokens = end[2] - start[2]
    return FloodResult(
        beta["median_ttft_ms"],
        beta["p99_ttft_ms"],
        tokens / (end[0] - start[0]),
        tokens / max(end[1] - start[1], 1e-9),
        preempted,
    )


def median_of(runs: list[FloodResult]) -> FloodResult:
    causes = {cause for run in runs for cause in run.preempted}
    return FloodResult(
        statistics.median(r.beta_ttft_p50_ms for r in runs),
        statistics.median(r.beta_ttft_p99_ms for r in runs),
        statistics.median(r.alpha_tok_s for r in runs),
        statistics.median(r.alpha_tok_per_cpu_s for r in runs),
        {c: int(statistics.median(r.preempted.get(c, 0) for r in runs)) for c in sorted(causes)},
    )


def flood(args: argparse.Namespace, tmp: Path, tenants: Path) -> tuple[str, str]:
    caches = [("default", []), ("small", ["--num-kv-blocks", str(args.small_kv_blocks)])]
    runs: dict[tuple[str, str], list[FloodResult]] = {}
    for _ in range(args.repeats):
        for cache, cache_flags in caches:
            key = (cache, "beta alone")
            runs.setdefault(key, []).append(
                flood_once(args, tmp, tenants, "fair", cache_flags, False)
            )
            for label, policy, extra in FLOOD_POLICIES:
                result = flood_once(args, tmp, tenants, policy, [*cache_flags, *extra], True)
                runs.setdefault((cache, label), []).append(result)
                log(f"{cache} {label}: {result}")
    rows = []
    for cache, _ in caches:
        alone = median_of(runs[(cache, "beta alone")])
        base = median_of(runs[(cache, "fair")])
        rows.append([cache, "beta alone", alone.beta_ttft_p50_ms, alone.beta_ttft_p99_ms, 1.0,
                     *["-"] * 5])  # fmt: skip
        for label, _, _ in FLOOD_POLICIES:
            r = median_of(runs[(cache, label)])
            rows.append([
                cache, label, r.beta_ttft_p50_ms, r.beta_ttft_p99_ms,
                r.beta_ttft_p50_ms / alone.beta_ttft_p50_ms, r.alpha_tok_s,
                f"{1 - r.alpha_tok_s / base.alpha_tok_s:+.1%}", r.alpha_tok_per_cpu_s,
                f"{1 - r.alpha_tok_per_cpu_s / base.alpha_tok_per_cpu_s:+.1%}",
                ", ".join(f"{c} {n}" for c, n in r.preempted.items()) or "-",
            ])  # fmt: skip
    header = ["KV cache", "policy", "beta TTFT p50 ms", "beta TTFT p99 ms", "p50 / alone",
              "alpha tok/s", "alpha loss vs fair", "alpha tok per server CPU-s",
              "loss per CPU-s", "alpha preempted"]  # fmt: skip
    body = f"""{run_header("cpu")}
Server: `python -m frontend serve --model {args.model.name} --device cpu --num-threads
{args.num_threads} --max-num-seqs {args.max_num_seqs} --tenants FILE --queue-policy POLICY
[--no-policy-preemption] [--num-kv-blocks {args.small_kv_blocks}]`, one per run. alpha:
`python -m loadtest --api-key KEY --request-rate inf --max-concurrency {args.flood_streams}
--input-len 16 --output-len {args.flood_len}`: {args.flood_streams} streams of
{args.flood_len} tokens in flight, until beta is done. Once alpha's queue is full, beta:
`python -m loadtest {" ".join(beta_flags(args)[2:])}`, one request at a time with Poisson
gaps. "small" KV: {args.small_kv_blocks} blocks of 16 tokens, fewer than alpha's
{args.max_num_seqs} contexts need at full length ({args.max_num_seqs} x
{16 + args.flood_len} tokens), so alpha fills the cache as well as the seats. Medians of
{args.repeats} runs of each, interleaved.

{markdown_table(header, rows)}

"p50 / alone": beta's median TTFT against its median TTFT with the server to itself (the
target: <= 3x under `fair` + preemption). alpha's rate is counted by the server
(`loom:generation_tokens_total`) over beta's run, per second and per CPU-second of the server
process; "loss" is against `fair` without preemption (the target: <= 10%). The CPU-second
figure is the one that other work on these shared cores moves least: a loss there is work
the engine did, not time it was denied. "alpha preempted": by cause, over the run.
"""
    return "Tenants under a flood: preemption for share", body


def quantum(args: argparse.Namespace, tmp: Path, tenants: Path) -> tuple[str, str]:
    quanta = [int(q) for q in args.quanta.split(",")]
    caches = [("default", []), ("small", ["--num-kv-blocks", str(args.small_kv_blocks)])]
    rows = []
    for cache, cache_flags in caches:
        base = None
        for q in [None, *quanta]:
            extra = ["--no-policy-preemption"] if q is None else ["--preemption-quantum", str(q)]
            runs = [
                flood_once(args, tmp, tenants, "fair", [*cache_flags, *extra], True)
                for _ in range(args.repeats)
            ]
            r = median_of(runs)
            three = three_backlogged(args, tmp, tenants, [*cache_flags, *extra])
            base = base or (r, three)
            per_cpu = r.alpha_tok_per_cpu_s
            rows.append([
                cache, "no preemption" if q is None else q, r.beta_ttft_p50_ms,
                per_cpu, f"{per_cpu / base[0].alpha_tok_per_cpu_s - 1:+.1%}",
                sum(r.preempted.values()), three[0], three[1],
                f"{three[1] / base[1][1] - 1:+.1%}", three[2],
            ])  # fmt: skip
            log(f"{cache} q={q}: {rows[-1]}")
    header = ["KV cache", "quantum", "flood: beta TTFT p50 ms", "alpha tok per CPU-s",
              "vs none", "alpha preempted", "3 tenants: tok/s", "tok per CPU-s", "vs none",
              "preempted"]  # fmt: skip
    body = f"""{run_header("cpu")}
The flood of the section above under `fair`, for each `--preemption-quantum` (and without
preemption); and three tenants a, b, c each keeping 6 streams of {args.flood_len} tokens in
flight on {args.max_num_seqs} seats, where the seat that cannot be split evenly is time-shared
a quantum at a time: total output throughput and preemptions. Medians of {args.repeats} runs
of the flood, one of the three-tenant run.

{markdown_table(header, rows)}
"""
    return "Preemption quantum: beta's wait against the cost of preempting", body


def three_backlogged(
    args: argparse.Namespace, tmp: Path, tenants: Path, extra: list[str]
) -> tuple[float, float, int]:
    """(output tok/s, output tokens per server CPU-s, preemptions) with a, b and c each
    backlogged (6 streams each) until together they have had 54 requests."""
    with loom_server(args, "fair", tenants, extra) as server:
        cpu = server.cpu_seconds()
        started = time.monotonic()
        runs = [
            (loadtest(server.target, tmp / f"{t}.json", "--api-key", KEYS[t], "--request-rate",
                      "inf", "--max-concurrency", "6", "--num-prompts", "18", "--input-len",
                      "16", "--output-len", str(args.flood_len), "--seed", str(i)), t)
            for i, t in enumerate("abc")
        ]  # fmt: skip
        results = [finished(run, tmp / f"{t}.json") for run, t in runs]
        seconds, cpu = time.monotonic() - started, server.cpu_seconds() - cpu
        preempted = sum(sum(server.preemptions(t).values()) for t in "abc")
    tokens = sum(r["total_output_tokens"] for r in results)
    return tokens / seconds, tokens / cpu, preempted


def fairness(argv: list[str] | None = None) -> None:
    p = bench_parser("fairness", "tenants under pressure: overload, flood, quantum")
    p.add_argument("scenario", choices=("overload", "flood", "quantum"))
    p.add_argument("--model", type=Path, default=STORIES_DIR)
    p.add_argument("--max-num-seqs", type=int, default=4, help="small, so one tenant fills it")
    p.add_argument(
        "--num-threads", type=int, default=1, help="the server's; one is fastest for a tiny model"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    p.add_argument(
        "--repeats", type=int, default=3, help="runs of each, interleaved (overload: the median)"
    )
    g = p.add_argument_group("overload")
    g.add_argument("--overload", type=float, default=2.0, help="offered / measured capacity")
    g.add_argument("--seat-counts", default="4,256", help="--max-num-seqs values to run")
    g.add_argument(
        "--policies",
        default=",".join(label for label, _, _ in OVERLOAD_POLICIES),
        help="labels to run, fcfs among them",
    )
    g.add_argument("--seconds", type=float, default=12.0, help="how long both send")
    g.add_argument("--input-len", type=int, default=32)
    g.add_argument("--output-len", type=int, default=32)
    g.add_argument("--deadlines", default=DEADLINES_MS, help="ms, one drawn per request")
    g = p.add_argument_group("flood and quantum")
    g.add_argument("--flood-streams", type=int, default=16)
    g.add_argument("--flood-len", type=int, default=480, help="alpha's output tokens")
    g.add_argument("--small-kv-blocks", type=int, default=96, help="alpha's 4 contexts fill it")
    g.add_argument("--beta-rate", type=float, default=2.0, help="beta's requests/s")
    g.add_argument("--beta-len", type=int, default=16, help="beta's output tokens")
    g.add_argument("--quanta", default="1,4,16,64,256")
    args = p.parse_args(argv)
    scenarios = {"overload": overload, "flood": flood, "quantum": quantum}
    with tempfile.TemporaryDirectory() as tmp:
        title, body = scenarios[args.scenario](args, Path(tmp), tenants_file(Path(tmp)))
    publish(title, body, not args.no_write)
