"""The router's settings: `ServerConfig` (address, callers, TLS, limits, as every Loom server
takes them) and how to reach, watch and choose the backends. `python -m router serve` builds
one flag per field.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Any

from common.checks import integer, number, one_of
from common.settings import setting
from serving.server_config import ServerConfig, readable_file

POLICIES = ("prefix", "least_loaded", "round_robin")
_ADDRESS = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})")
# How much busier than the least loaded backend, as a share of its max_num_seqs, the backend
# caching a prefix may be before a request with that prefix goes to the least loaded instead.
# Measured (BENCHMARKS.md, "Router"): on a uniform shared-prefix workload the hit tokens rise
# with the margin; on a skewed one (75% on one prefix) margins above 1 pile the hot prefix on
# one replica and the median TTFT roughly doubles or worse (three runs on a 2-core CPU). 1 is
# the largest margin short of that.
DEFAULT_PREFIX_LOAD_MARGIN = 1.0


def backend_address(text: str) -> str:
    """`HOST:PORT` (`[::1]:50051` for IPv6), the port in 1..65535."""
    match = _ADDRESS.fullmatch(text)
    if not match or not 1 <= int(match.group(1)) <= 65535:
        raise ValueError(f"a backend is HOST:PORT, got {text!r}")
    return text


class AppendBackend(argparse.Action):
    """`--backend` may be repeated; the values gather into a tuple (a frozen setting)."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, (*getattr(namespace, self.dest), value))


@dataclass(slots=True, frozen=True)
class RouterConfig(ServerConfig):
    # One flag per field, so the field is named as the flag users repeat: --backend.
    backend: tuple[str, ...] = setting(
        (),
        "an engine replica to route to; repeat for each (at least one)",
        type=backend_address,
        action=AppendBackend,
        metavar="HOST:PORT",
    )
    policy: str = setting(
        "prefix",
        "prefix: where the prompt's prefix is cached, unless that backend is busier than the "
        "least loaded by more than --prefix-load-margin; least_loaded; round_robin",
        one_of(POLICIES),
        choices=POLICIES,
    )
    prefix_load_margin: float = setting(
        DEFAULT_PREFIX_LOAD_MARGIN,
        "prefix policy: how many more requests (running + waiting), as a share of its "
        "max_num_seqs, the backend caching the prefix may have than the least loaded backend "
        "before the request goes to the least loaded",
        number(0),
    )
    health_check_interval: float = setting(
        0.5,
        "seconds between polls (GetLoad) of each backend: its load and whether it answers",
        number(0, low_open=True),
    )
    health_check_timeout: float = setting(
        1.0, "seconds a poll may take before it counts failed", number(0, low_open=True)
    )
    health_check_failures: int = setting(
        2,
        "polls failed in a row before a backend is out and its requests end UNAVAILABLE",
        integer(1),
    )
    retries: int = setting(
        1,
        "times a request a backend refused with UNAVAILABLE before sending any output (it "
        "drains, or went away) is tried on another backend",
        integer(0),
    )
    backend_api_key_file: str | None = setting(
        None,
        "file holding the API key of the router's own calls (GetModelInfo, GetLoad) to "
        "backends that check keys; callers' calls carry the callers' keys",
        type=readable_file,
        metavar="FILE",
    )
    backend_tls: bool = setting(False, "speak TLS to the backends (the system's CAs)")
    backend_tls_ca: str | None = setting(
        None, "PEM CA bundle to trust for the backends (implies TLS)", type=readable_file,
        metavar="FILE",
    )  # fmt: skip
    backend_tls_cert: str | None = setting(
        None, "PEM client certificate for backends that require mutual TLS", type=readable_file,
        metavar="FILE",
    )  # fmt: skip
    backend_tls_key: str | None = setting(
        None, "PEM private key of --backend-tls-cert", type=readable_file, metavar="FILE"
    )

    def __post_init__(self) -> None:
        ServerConfig.__post_init__(self)  # zero-argument super() fails in a slots dataclass
        object.__setattr__(self, "backend", tuple(self.backend))
        if not self.backend:
            raise ValueError("give at least one --backend HOST:PORT")
        for address in self.backend:
            backend_address(address)
        if len(set(self.backend)) != len(self.backend):
            raise ValueError(f"a backend is named twice: {', '.join(self.backend)}")
        if (self.backend_tls_cert is None) != (self.backend_tls_key is None):
            raise ValueError("backend_tls_cert and backend_tls_key go together")

    @property
    def backends(self) -> tuple[str, ...]:
        return self.backend
