"""The engine server's own settings, beside the engine's (scheduler/config.py).

`ServeConfig` is everything `python -m frontend serve` takes: the CLI builds one flag per
leaf field of it, with the field's default and help, and nothing else. What any Loom server
takes (address, callers, TLS, limits) is `ServerConfig` (serving/server_config.py), which the
router's settings extend too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.checks import integer, number, one_of
from common.settings import check_settings, leaf_fields, setting
from frontend.tenant_labels import LABEL_MODES
from scheduler.config import ENGINE_SIDE_SETTINGS, EngineConfig
from serving.server_config import ServerConfig

# One call of many prompts queues them all at once, ahead of every other tenant's next
# request under fcfs, and each costs server memory until it ends. Measured (README,
# Reliability; `python -m loadtest.batch_cost`): another tenant's request waits for the whole
# call, which grows with its prompts (4,096 held it 126 to 394 times its own latency), and
# memory grows 25 to 50 KB per prompt. 256, one engine batch at the default max_num_seqs,
# lets a client batch a full engine step's worth and no more.
DEFAULT_MAX_PROMPTS_PER_REQUEST = 256
# A client writes a request's head at once; it arrives within a round trip, or a few seconds
# when TCP retransmits it (initial timeout 1 s, doubling). A held connection costs 3-4 KB but
# is held as long as the client likes without a deadline (`python -m loadtest.http_timeouts
# slow-headers`: 200 connections trickling a byte a second all open at 40 s, all closed at
# 10.0 s with this).
DEFAULT_HTTP_HEADER_TIMEOUT = 10.0
# OpenAI's SDKs (httpx) let a pooled connection go after 5 s idle; a server closing at 5 s
# makes a reuse at that edge fail (`idle-reuse`: 12 of 20 at 5.0 s). Twice that, the client
# always lets go first.
DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT = 10.0


@dataclass(slots=True, frozen=True)
class FrontendConfig(ServerConfig):
    http_port: int | None = setting(
        None,
        "OpenAI-compatible HTTP API port on --host (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics; default: off; 0: any free port)",
        integer(0, optional=True),
    )
    http_header_timeout: float = setting(
        DEFAULT_HTTP_HEADER_TIMEOUT,
        "seconds an HTTP connection has to send a request's headers, from its opening or "
        "from the first byte of its next request; a slower one is closed",
        number(0, low_open=True),
    )
    http_keep_alive_timeout: float = setting(
        DEFAULT_HTTP_KEEP_ALIVE_TIMEOUT,
        "seconds an HTTP connection may stay idle between requests before it is closed",
        number(0, low_open=True),
    )
    max_prompts_per_request: int = setting(
        DEFAULT_MAX_PROMPTS_PER_REQUEST,
        "most engine sequences one /v1/completions call with several prompts may create "
        "(prompts x n); larger calls are refused (400) before any work",
        integer(1),
    )
    metrics_tenant_labels: str = setting(
        "file",
        "the tenant label of the per-tenant metric series: file (a tenants file's tenants by "
        "name, others `other`; without keys the first 8 tenants callers name, then `other`) "
        "or none (one series for all tenants, `all`: no tenant name published)",
        one_of(LABEL_MODES),
        choices=LABEL_MODES,
    )
    max_step_failures: int = setting(
        3,
        "failed engine steps in a row (worker faults, not an unreachable worker) before the "
        "engine loop stops and health turns NOT_SERVING; 0: never stop",
        integer(0),
    )
    # ServerConfig.__post_init__ checks these fields with its own.


@dataclass(slots=True, frozen=True)
class RemoteWorkerConfig:
    """A worker served by `python -m worker serve` elsewhere (contract/remote_worker.py)."""

    worker: str | None = setting(
        None,
        "HOST:PORT of a `python -m worker serve` to drive instead of loading a model here",
        metavar="HOST:PORT",
    )
    worker_timeout: float = setting(
        30.0,
        "seconds a step may take to answer before the worker counts as unreachable",
        number(0, low_open=True),
    )
    worker_startup_timeout: float = setting(
        120.0,
        "seconds to wait at start for the worker to answer (it may still be loading)",
        number(0, low_open=True),
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.worker is not None and not _is_host_port(self.worker):
            raise ValueError(f"worker must be HOST:PORT, got {self.worker!r}")


def _is_host_port(target: str) -> bool:
    host, _, port = target.rpartition(":")
    return bool(host) and port.isdigit()


# The worker's settings: every leaf of EngineConfig but the scheduler's own (its model, cache
# and parallel parts are worker/config.py's dataclasses). With --worker they belong on
# `python -m worker serve`, not here.
WORKER_SIDE_SETTINGS = frozenset(
    name
    for name, path in leaf_fields(EngineConfig).items()
    if path[0] != "scheduler" and name not in ENGINE_SIDE_SETTINGS
)


@dataclass(slots=True, frozen=True)
class ServeConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    remote: RemoteWorkerConfig = field(default_factory=RemoteWorkerConfig)

    def __post_init__(self) -> None:
        if self.remote.worker is None:
            return
        given, defaults = self.engine, EngineConfig()
        for name, path in leaf_fields(EngineConfig).items():
            if name in WORKER_SIDE_SETTINGS and _leaf(given, path) != _leaf(defaults, path):
                raise ValueError(
                    f"{name} is the worker's setting: give it to `python -m worker serve`, "
                    "not to a scheduler with --worker"
                )


def _leaf(settings: object, path: tuple[str, ...]) -> object:
    for name in path:
        settings = getattr(settings, name)
    return settings
