"""The engine server's own settings, beside the engine's (scheduler/config.py).

`ServeConfig` is everything `python -m frontend serve` takes: the CLI builds one flag per
leaf field of it, with the field's default and help, and nothing else. What any Loom server
takes (address, callers, TLS, limits) is `ServerConfig` (serving/server_config.py), which the
router's settings extend too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.settings import check_at_least, leaf_fields, setting
from scheduler.config import EngineConfig
from serving.server_config import ServerConfig


@dataclass(slots=True, frozen=True)
class FrontendConfig(ServerConfig):
    http_port: int | None = setting(
        None,
        "OpenAI-compatible HTTP API port on --host (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics; default: off; 0: any free port)",
    )
    max_step_failures: int = setting(
        3,
        "failed engine steps in a row (worker faults, not an unreachable worker) before the "
        "engine loop stops and health turns NOT_SERVING; 0: never stop",
    )

    def __post_init__(self) -> None:
        # Zero-argument super() does not work in a slots dataclass (the class is rebuilt).
        ServerConfig.__post_init__(self)
        check_at_least(self, "http_port", 0, optional=True)
        check_at_least(self, "max_step_failures", 0)


@dataclass(slots=True, frozen=True)
class RemoteWorkerConfig:
    """A worker served by `python -m worker serve` elsewhere (contract/remote_worker.py)."""

    worker: str | None = setting(
        None,
        "HOST:PORT of a `python -m worker serve` to drive instead of loading a model here",
        metavar="HOST:PORT",
    )
    worker_timeout: float = setting(
        30.0, "seconds a step may take to answer before the worker counts as unreachable"
    )
    worker_startup_timeout: float = setting(
        120.0, "seconds to wait at start for the worker to answer (it may still be loading)"
    )

    def __post_init__(self) -> None:
        if self.worker is not None and not _is_host_port(self.worker):
            raise ValueError(f"worker must be HOST:PORT, got {self.worker!r}")
        for name in ("worker_timeout", "worker_startup_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def _is_host_port(target: str) -> bool:
    host, _, port = target.rpartition(":")
    return bool(host) and port.isdigit()


# The worker's settings: with --worker they belong on `python -m worker serve`.
WORKER_SIDE_SETTINGS = (
    "model", "device", "dtype", "seed", "attention_backend", "block_size", "num_kv_blocks",
    "kv_cache_memory", "tensor_parallel_size", "distributed_timeout",
)  # fmt: skip


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
