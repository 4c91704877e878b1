"""Per-request measurements and the summary figures computed from them."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

OK = "OK"
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")
GOODPUT_METRICS = ("ttft", "tpot", "e2el")
STATISTICS = ("mean", "median", "p90", "p99")


@dataclass(slots=True)
class RequestResult:
    """What the client saw of one request. Times are in seconds."""

    index: int  # position in the workload
    start_time: float  # when it was sent, after the run started
    prompt_len: int  # prompt tokens (from the server's usage when it reported one)
    status: str = OK  # gRPC status code name
    error: str = ""  # the status details when status is not OK
    ttft: float = 0.0  # time to first token; 0 when no token arrived
    itls: list[float] = field(default_factory=list)  # gaps between token-carrying messages
    e2el: float = 0.0  # end-to-end: sent -> last message or error
    output_len: int = 0  # tokens received
    tenant: str = ""  # "" when the run names no tenants
    cancel_planned: bool = False  # the harness meant to cancel this one
    deadline_ms: int | None = None  # the deadline it was sent with (--deadlines)

    @property
    def met_deadline(self) -> bool:
        """Completed, and within its deadline as the client measured it."""
        return self.ok and self.deadline_ms is not None and self.e2el * 1e3 <= self.deadline_ms

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def tpot(self) -> float:
        """Time per output token after the first; 0 for a single-token output."""
        if self.output_len <= 1:
            return 0.0
        return (self.e2el - self.ttft) / (self.output_len - 1)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default
    method); 0.0 for no values, so summaries of runs where nothing succeeded stay numbers."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {q}")
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def std(values: list[float]) -> float:
    """Population standard deviation (numpy's default, ddof=0)."""
    if not values:
        return 0.0
    m = mean(values)
    return math.sqrt(math.fsum((v - m) ** 2 for v in values) / len(values))


def parse_goodput(specs: list[str] | None) -> dict[str, float]:
    """["ttft:500", "tpot:50"] -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    slos: dict[str, float] = {}
    for spec in specs or []:
        name, sep, value = spec.partition(":")
        if not sep or name not in GOODPUT_METRICS:
            raise ValueError(
                f"--goodput takes NAME:MS with NAME in {', '.join(GOODPUT_METRICS)}; got {spec!r}"
            )
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--goodput {spec!r}: {value!r} is not a number of ms") from None
        if slos[name] <= 0:
            raise ValueError(f"--goodput {spec!r}: the goal must be > 0 ms")
    return slos


def meets_slos(result: RequestResult, slos: dict[str, float]) -> bool:
    measured_ms = {"ttft": result.ttft * 1e3, "tpot": result.tpot * 1e3, "e2el": result.e2el * 1e3}
    return result.ok and all(measured_ms[name] <= goal for name, goal in slos.items())


def _latency_stats(name: str, values_s: list[float]) -> dict[str, float]:
    values_ms = [v * 1e3 for v in values_s]
    return {
        f"mean_{name}_ms": mean(values_ms),
        f"median_{name}_ms": percentile(values_ms, 50),
        f"std_{name}_ms": std(values_ms),
        f"p90_{name}_ms": percentile(values_ms, 90),
        f"p99_{name}_ms": percentile(values_ms, 99),
    }


def summarize(
    results: list[RequestResult], duration: float, slos: dict[str, float]
) -> dict[str, object]:
    """The run's figures. Throughput and latency count completed requests only (as `vllm
    bench serve` does); failures are counted by status code. `request_goodput` is None
    when no goals were given."""
    done = [r for r in results if r.ok]
    failed_by_status = Counter(r.status for r in results if not r.ok)
    total_input = sum(r.prompt_len for r in done)
    total_output = sum(r.output_len for r in done)
    rate = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    summary: dict[str, object] = {
        "completed": len(done),
        "failed": len(results) - len(done),
        "failed_by_status": dict(sorted(failed_by_status.items())),
        "duration": duration,
        "total_input_tokens": total_input,
        "total_output_tokens": total_output,
        "request_throughput": rate(len(done)),
        "output_throughput": rate(total_output),
        "total_token_throughput": rate(total_input + total_output),
        "request_goodput": rate(sum(meets_slos(r, slos) for r in done)) if slos else None,
        "goodput_slos_ms": slos,
    }
    summary |= deadline_figures(results)
    summary |= _latency_stats("ttft", [r.ttft for r in done])
    summary |= _latency_stats("tpot", [r.tpot for r in done if r.output_len > 1])
    summary |= _latency_stats("itl", [gap for r in done for gap in r.itls])
    summary |= _latency_stats("e2el", [r.e2el for r in done])
    return summary


def deadline_figures(results: list[RequestResult]) -> dict[str, object]:
    """Of the requests sent with a deadline: how many completed within it, and that as a
    share of them all (their goodput); nothing when none had one."""
    with_deadline = [r for r in results if r.deadline_ms is not None]
    if not with_deadline:
        return {}
    met = sum(r.met_deadline for r in with_deadline)
    return {"deadlines_met": met, "deadline_goodput": met / len(with_deadline)}


def per_tenant(results: list[RequestResult], duration: float) -> dict[str, dict[str, float]]:
    """Per tenant of a multi-tenant run: counts, throughput, its share of the output tokens,
    TTFT and ITL percentiles (completed requests only, as the run's summary counts them)."""
    total_output = sum(r.output_len for r in results if r.ok) or 1
    rate = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    table = {}
    for tenant in sorted({r.tenant for r in results if r.tenant}):
        mine = [r for r in results if r.tenant == tenant]
        done = [r for r in mine if r.ok]
        output = sum(r.output_len for r in done)
        ttfts = [r.ttft * 1e3 for r in done]
        itls = [gap * 1e3 for r in done for gap in r.itls]
        table[tenant] = {
            "completed": len(done),
            "failed": len(mine) - len(done),
            "request_throughput": rate(len(done)),
            "output_throughput": rate(output),
            "output_token_share": output / total_output,
            "median_ttft_ms": percentile(ttfts, 50),
            "p99_ttft_ms": percentile(ttfts, 99),
            "median_itl_ms": percentile(itls, 50),
            "p99_itl_ms": percentile(itls, 99),
        } | deadline_figures(mine)
    return table
