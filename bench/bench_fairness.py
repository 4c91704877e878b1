"""Two tenants, one overloading the server: tenant a sends several times tenant b's rate, more
than the server completes, under `--queue-policy fcfs`, `priority` and `fair` in turn. Per
tenant: TTFT p50/p99 and the share of the tokens served while both were sending.

    python -m bench.bench_fairness                       # stories260K, about 2 minutes
    python -m bench.bench_fairness --seconds 5 --no-write    # quick

The tenants file is the same for the three runs: both weigh 1, b has priority 0 and a
priority 1, so `priority` favours b because the operator said so, and `fair` because a
already has more than its share.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from bench.bench_online import free_port
from bench.common import REPO_ROOT, markdown_table, run_header, write_section
from serving.tenants import hash_key

SECTION = "Multi-tenant overload: fcfs, priority and fair share"
POLICIES = ("fcfs", "priority", "fair")
KEYS = {"a": "bench-key-a", "b": "bench-key-b"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO_ROOT / "models" / "stories260K")
    p.add_argument("--max-num-seqs", type=int, default=4, help="small, so a saturates it")
    # About twice what the engine completes on a quiet 2-core machine: a's queue builds up.
    p.add_argument("--rate-a", type=float, default=64.0, help="tenant a's requests/s")
    p.add_argument("--rate-b", type=float, default=8.0, help="tenant b's requests/s")
    p.add_argument("--seconds", type=float, default=15.0, help="how long both send")
    p.add_argument("--input-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


def tenants_file(directory: Path) -> Path:
    path = directory / "tenants.toml"
    path.write_text(
        "".join(
            f'[tenants.{name}]\napi_key_sha256 = ["{hash_key(key)}"]\npriority = {priority}\n\n'
            for (name, key), priority in zip(KEYS.items(), (1, 0), strict=True)
        )
    )
    return path


@contextmanager
def loom_server(args: argparse.Namespace, policy: str, tenants: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "frontend", "serve", "--model", str(args.model),
               "--port", str(port), "--device", "cpu", "--queue-policy", policy,
               "--max-num-seqs", str(args.max_num_seqs), "--tenants", str(tenants),
               "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(command, cwd=REPO_ROOT)
    target = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(target) as channel:
            grpc.channel_ready_future(channel).result(timeout=300)
        yield target
    finally:
        server.terminate()
        server.wait(timeout=60)


def run_loadtest(target: str, args: argparse.Namespace, path: Path) -> dict:
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


def main() -> None:
    args = parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tenants = tenants_file(Path(tmp))
        for policy in POLICIES:
            with loom_server(args, policy, tenants) as target:
                result = run_loadtest(target, args, Path(tmp) / f"{policy}.json")
            shares = shares_while_sending(result)
            per = result["per_tenant"]
            for tenant in ("a", "b"):
                t = per[tenant]
                rows.append([
                    policy, tenant, t["completed"], t["failed"], t["median_ttft_ms"],
                    t["p99_ttft_ms"], t["median_itl_ms"], t["p99_itl_ms"], shares[tenant],
                    t["output_token_share"], result["duration"], result["output_throughput"],
                ])  # fmt: skip
            print(
                f"{policy}: b TTFT p50 {per['b']['median_ttft_ms']:.0f} ms, a "
                f"{per['a']['median_ttft_ms']:.0f} ms",
                file=sys.stderr,
                flush=True,
            )
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
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
