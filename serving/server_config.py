"""What every Loom gRPC server takes, the engine's (`frontend serve`) and the router's
(`router serve`): where it listens, who may call (API keys or a tenants file), TLS, the
largest message, metrics (where, and over TLS or not), how long a drain waits, and how much
it logs.

`FrontendConfig` (frontend/config.py) and `RouterConfig` (router/config.py) extend
`ServerConfig`, so each of these settings is declared once for both. No engine code here.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.checks import boolean, integer, number, one_of
from common.settings import LOG_LEVELS, check_settings, parse_bytes, setting
from serving.auth import load_api_keys
from serving.tenants import load_tenants


def api_keys_file(path: str) -> dict[str, str]:
    """`--api-keys FILE` -> {key: tenant}; a bad file is a usage error naming it."""
    try:
        return load_api_keys(path)
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def tenants_file(path: str) -> str:
    """`--tenants FILE`, checked before anything starts; the server reads it again at start
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
class ServerConfig:
    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = setting(50051, "gRPC port (0: any free port)", integer(0))
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
        1 << 20, "largest request message accepted (default 1MiB)", integer(1), type=parse_bytes
    )
    metrics_port: int | None = setting(
        None, "Prometheus /metrics port (default: off)", integer(0, optional=True)
    )
    metrics_host: str | None = setting(
        None,
        "address /metrics listens on (default: --host); 127.0.0.1 keeps it off the network "
        "while the API listens on every interface",
        metavar="HOST",
    )
    metrics_tls: bool = setting(
        False,
        "serve /metrics over TLS with --tls-cert and --tls-key; with --tls-client-ca, only "
        "scrapers holding a certificate it signed may read it",
        boolean,
    )
    shutdown_timeout: float = setting(
        30.0, "seconds in-flight requests get to finish on SIGTERM", number(0)
    )
    log_level: str = setting(
        "info", "one line per finished request at info", one_of(LOG_LEVELS), choices=LOG_LEVELS
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.api_keys is not None and self.tenants is not None:
            raise ValueError("give at most one of api_keys and tenants")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        if self.metrics_tls and self.tls_cert is None:
            raise ValueError("metrics_tls needs tls_cert and tls_key")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")

    def metrics_url(self, port: int) -> str:
        """Where /metrics is served, for the start-up log line."""
        scheme = "https" if self.metrics_tls else "http"
        return f"{scheme}://{self.metrics_host or self.host}:{port}/metrics"
