"""`python -m loadtest soak`: a bounded soak of a Loom server on this machine, its report,
and an exit code that says whether it passed (0), failed (1) or could not run (2)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import json
import platform
import sys
from dataclasses import asdict, fields
from pathlib import Path
from urllib.parse import urlsplit

import grpc

from loadtest.soak import SoakReport, run_soak
from loadtest.soak_plan import SoakOptions
from loompb import serving_pb2, serving_pb2_grpc

MIB = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtest soak",
        description="Soak a Loom server on this machine: rounds of mixed unary and streamed "
        "calls from several tenants, with cancels, deadlines and clients hanging up; after "
        "each round the server must be idle on its /metrics (nothing running or waiting, no "
        "KV block held). Bounded by --streams and --duration, whichever comes first.",
    )
    p.add_argument("--target", default="127.0.0.1:50051", help="the server's HOST:PORT")
    p.add_argument(
        "--metrics-url", required=True, help="its Prometheus endpoint, http://HOST:PORT/metrics"
    )
    defaults = SoakOptions()
    helps = {
        "streams": "calls in the whole run",
        "rounds": "rounds the calls are split into; the server must be idle after each",
        "duration": "seconds; no call starts after this",
        "cancel_fraction": "share of calls the client cancels: a stream after a random number "
        "of its messages, a unary call uniform(0, --cancel-max-delay) s after sending",
        "deadline_fraction": "share of calls with a deadline of uniform(0.01, 0.25) s",
        "disconnect_fraction": "share of streams whose client closes its connection mid-call",
        "unary_fraction": "share of the other calls made with Generate rather than a stream",
        "concurrency": "calls in flight at most",
        "tenants": "tenants (x-loom-tenant soak-0 ..)",
        "max_tokens": "max_tokens of a call is uniform in [1, this]",
        "cancel_max_delay": "seconds (unary calls)",
        "call_timeout": "deadline of calls without a planned one: a call still open is lost",
        "idle_timeout": "seconds the server has to be idle after a round",
        "seed": "seeds the whole run",
    }
    for option in fields(SoakOptions):
        default = getattr(defaults, option.name)
        p.add_argument(
            f"--{option.name.replace('_', '-')}",
            type=type(default),
            default=default,
            help=f"{helps[option.name]} (default {default})",
        )
    p.add_argument("--save-result", type=Path, help="write the report as JSON")
    return p


def check_loopback(target: str, metrics_url: str) -> None:
    """A soak cancels, hangs up and floods: it is for a server on this machine only."""
    hosts = {"--target": target.rpartition(":")[0], "--metrics-url": urlsplit(metrics_url).hostname}
    for flag, host in hosts.items():
        host = (host or "").strip("[]")
        if host == "localhost":
            continue
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{flag} must be on this machine (127.0.0.1, ::1, localhost)")


def format_report(report: SoakReport) -> str:
    lines = ["=" * 20 + " Soak " + "=" * 20]

    def row(label: str, value: object) -> None:
        lines.append(f"{label:<34}{value!s:>12}")

    row("Duration (s):", f"{report.duration:.1f}")
    row("Rounds:", len(report.idle_checks))
    row("Calls:", len(report.calls))
    row("  streamed:", sum(call.streamed for call in report.calls))
    for fate, count in report.by_fate().items():
        row(f"  {fate}:", count)
    row("Tokens received:", sum(call.num_tokens for call in report.calls))
    lines.append("Calls by status:")
    for status, count in report.by_status().items():
        row(f"  {status}:", count)
    row("Calls lost:", len(report.lost))
    for call in report.lost[:10]:
        lines.append(f"  call {call.index} ({call.fate}): {call.problem}")
    last = report.idle_checks[-1] if report.idle_checks else None
    row("Rounds ending idle:", sum(check.idle for check in report.idle_checks))
    if last is not None:
        row("Blocks held after the last round:", int(last.blocks_used))
        retained = f"{int(last.prefix_cache_blocks)}/{int(last.blocks)}"
        row("Blocks the prefix cache retains:", retained)
    if report.rss_samples:
        rss = [value for _, value in report.rss_samples]
        row("Server RSS start (MiB):", f"{rss[0] / MIB:.1f}")
        row("Server RSS end (MiB):", f"{rss[-1] / MIB:.1f}")
        row("Server RSS max (MiB):", f"{max(rss) / MIB:.1f}")
    row("Result:", "PASS" if report.passed else "FAIL")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    options = SoakOptions(**{f.name: getattr(args, f.name) for f in fields(SoakOptions)})
    try:
        options.check()
        check_loopback(args.target, args.metrics_url)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with grpc.insecure_channel(args.target) as channel:
            stub = serving_pb2_grpc.GenerationStub(channel)
            info = stub.GetModelInfo(serving_pb2.GetModelInfoRequest(), timeout=10)
    except grpc.RpcError as exc:
        print(f"error: {args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    run = run_soak(args.target, args.metrics_url, options, info.vocab_size, info.max_model_len)
    try:
        report = asyncio.run(run)
    except OSError as exc:  # /metrics unreachable
        print(f"error: {args.metrics_url}: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.save_result:
        document = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["python -m loadtest soak", *argv]),
            "client_host": platform.node(),
            "model_name": info.model_name,
            "options": asdict(options),
            "passed": report.passed,
            "by_status": report.by_status(),
            "num_lost": len(report.lost),
            **asdict(report),
        }
        args.save_result.write_text(json.dumps(document, indent=1) + "\n")
    return 0 if report.passed else 1
