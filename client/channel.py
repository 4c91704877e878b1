"""Channels to a Loom server: plaintext, TLS, or mutual TLS, from PEM file paths."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc


def channel_credentials(
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls: bool = False,
) -> grpc.ChannelCredentials | None:
    """None for plaintext. TLS when `tls` or any file is given: `tls_ca` is the CA bundle to
    trust (default: the system's roots); `tls_cert` and `tls_key` are this client's
    certificate for a server that requires mutual TLS."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("tls_cert and tls_key go together: give both or neither")
    if not (tls or tls_ca or tls_cert):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls_ca),
        private_key=_read(tls_key),
        certificate_chain=_read(tls_cert),
    )


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = (),
    *,
    aio: bool = False,
) -> Any:
    """A blocking channel, or a grpc.aio one with `aio`."""
    module = grpc.aio if aio else grpc
    if credentials is None:
        return module.insecure_channel(target, options=list(options))
    return module.secure_channel(target, credentials, options=list(options))
