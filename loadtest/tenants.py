"""`--tenant NAME:KEY:RATE` (repeatable): several tenants at once, each with its own key and its
own arrival process, and the end-of-run figures of each.

`--num-prompts` is the total, split in proportion to the rates so that every tenant sends over
the same span of time: `--tenant a:key-a:8 --tenant b:key-b:2 --num-prompts 100` sends 80 of
a's at 8 req/s and 20 of b's at 2 req/s. An empty KEY names the tenant with `x-loom-tenant`
(a server without keys) instead of `authorization: Bearer KEY`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from loadtest.arrivals import arrival_offsets

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(slots=True, frozen=True)
class TenantSpec:
    name: str
    api_key: str  # "" -> x-loom-tenant
    rate: float  # requests per second

    @property
    def metadata(self) -> list[tuple[str, str]]:
        if self.api_key:
            return [("authorization", f"Bearer {self.api_key}")]
        return [("x-loom-tenant", self.name)]


def parse_tenant(text: str) -> TenantSpec:
    """`NAME:KEY:RATE`; the key may itself hold colons (the name and rate may not)."""
    name, sep, rest = text.partition(":")
    key, sep2, rate_text = rest.rpartition(":")
    if not sep or not sep2:
        raise ValueError(f"--tenant takes NAME:KEY:RATE, got {text!r}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"--tenant {text!r}: NAME must match {_NAME.pattern}")
    try:
        rate = float(rate_text)
    except ValueError:
        raise ValueError(f"--tenant {text!r}: RATE {rate_text!r} is not a number") from None
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"--tenant {text!r}: RATE must be a finite number of requests/s > 0")
    return TenantSpec(name, key, rate)


def check_tenants(specs: list[TenantSpec], num_prompts: int) -> None:
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError("each --tenant needs its own NAME")
    if num_prompts < len(specs):
        raise ValueError(f"--num-prompts ({num_prompts}) must give every --tenant a request")


def split_by_rate(num_prompts: int, specs: list[TenantSpec]) -> list[int]:
    """Requests per tenant in proportion to its rate, each at least 1, summing to the total
    (largest remainders get the leftovers)."""
    total = sum(spec.rate for spec in specs)
    exact = [num_prompts * spec.rate / total for spec in specs]
    counts = [max(1, math.floor(x)) for x in exact]
    by_remainder = sorted(range(len(specs)), key=lambda i: counts[i] - exact[i])
    i = 0
    while sum(counts) < num_prompts:
        counts[by_remainder[i % len(specs)]] += 1
        i += 1
    while sum(counts) > num_prompts:  # only where the floor of 1 lifted a small tenant
        j = max(range(len(specs)), key=lambda k: counts[k])
        counts[j] -= 1
    return counts


def tenant_arrivals(
    num_prompts: int, specs: list[TenantSpec], burstiness: float, rng: np.random.Generator
) -> tuple[list[float], list[int]]:
    """Every tenant's own arrival process, merged: (send offsets in time order, the tenant
    index of each request)."""
    merged: list[tuple[float, int]] = []
    counts = split_by_rate(num_prompts, specs)
    for index, (spec, count) in enumerate(zip(specs, counts, strict=True)):
        merged += [(t, index) for t in arrival_offsets(count, spec.rate, burstiness, rng)]
    merged.sort()
    return [t for t, _ in merged], [index for _, index in merged]


def format_tenant_table(table: dict[str, dict[str, float]]) -> str:
    """The per-tenant figures of `loadtest.metrics.per_tenant`, one line each."""
    header = (
        f"{'tenant':<16}{'done':>6}{'failed':>7}{'req/s':>8}{'tok/s':>9}{'share':>7}"
        f"{'TTFT p50':>10}{'p99':>9}{'ITL p50':>9}{'p99':>8}"
    )
    lines = ["Per tenant (ms):", header]
    for tenant, row in table.items():
        lines.append(
            f"{tenant:<16}{row['completed']:>6}{row['failed']:>7}"
            f"{row['request_throughput']:>8.2f}{row['output_throughput']:>9.1f}"
            f"{row['output_token_share']:>7.2f}{row['median_ttft_ms']:>10.1f}"
            f"{row['p99_ttft_ms']:>9.1f}{row['median_itl_ms']:>9.1f}{row['p99_itl_ms']:>8.1f}"
        )
    return "\n".join(lines)
