"""The server's own settings, beside the engine's (scheduler/config.py).

`ServeConfig` is everything `python -m scheduler serve` takes: the CLI builds one flag per
leaf field of it, with the field's default and help, and nothing else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from frontend.auth import load_api_keys
from frontend.tenants import load_tenants
from scheduler.config import EngineConfig
from worker.config import check_at_least, leaf_fields, parse_bytes, setting

LOG_LEVELS = ("debug", "info", "warning", "error")


def api_keys_file(path: str) -> dict[str, str]:
    """`--api-keys FILE` -> {key: tenant}; a bad file is a usage error naming it."""
    try:
        return load_api_keys(path)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def tenants_file(path: str) -> str:
    """`--tenants FILE`, checked before the model loads; the server reads it again at start
    and on SIGHUP."""
    try:
        load_tenants(path)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return path


def readable_file(path: str) -> str:
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"no file at {path}")
    return path


@dataclass(slots=True, frozen=True)
class FrontendConfig:
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = setting(50051, "gRPC port (0: any free port)")
    # {key: tenant}; None: no auth, the tenant comes from x-loom-tenant.
    api_keys: dict[str, str] | None = setting(
        None,
        "lines `KEY TENANT`; calls must send `authorization: Bearer KEY`",
        type=api_keys_file,
        metavar="FILE",
    )
    tenants: str | None = setting(
        None,
        "TOML tenants file: hashed API keys, weights, priorities, quotas; SIGHUP reloads it",
        type=tenants_file,
        metavar="FILE",
    )
    tls_cert: str | None = setting(
        None,
        "PEM certificate chain: serve TLS (with --tls-key)",
        type=readable_file,
        metavar="FILE",
    )
    tls_key: str | None = setting(
        None, "PEM private key of --tls-cert", type=readable_file, metavar="FILE"
    )
    tls_client_ca: str | None = setting(
        None,
        "PEM CA bundle: mutual TLS, every client must present a certificate it signed",
        type=readable_file,
        metavar="FILE",
    )
    max_request_bytes: int = setting(
        1 << 20, "largest request message accepted (default 1MiB)", type=parse_bytes
    )
    metrics_port: int | None = setting(None, "Prometheus /metrics port (default: off)")
    shutdown_timeout: float = setting(30.0, "seconds in-flight requests get to finish on SIGTERM")
    max_step_failures: int = setting(3, "failed engine steps in a row before the loop stops")

    def __post_init__(self) -> None:
        check_at_least(self, "port", 0)
        check_at_least(self, "metrics_port", 0, optional=True)
        check_at_least(self, "max_request_bytes", 1)
        check_at_least(self, "max_step_failures", 1)
        if self.api_keys is not None and self.tenants is not None:
            raise ValueError("give at most one of api_keys and tenants")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        if self.shutdown_timeout < 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")


@dataclass(slots=True, frozen=True)
class RemoteWorkerConfig:
    """A worker served by `python -m worker serve` elsewhere (frontend/remote_worker.py)."""

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
    log_level: str = setting("info", "one line per finished request at info", choices=LOG_LEVELS)

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
