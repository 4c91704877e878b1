"""TLS for the gRPC port: server credentials from the PEM files the settings name.

`--tls-cert` and `--tls-key` serve TLS; `--tls-client-ca` adds mutual TLS, where the handshake
fails for a client without a certificate that CA signed. Health and reflection share the
port, and so its TLS; the Prometheus `/metrics` port stays plain HTTP.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from serving.server_config import ServerConfig


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """None for plaintext; OSError when a file cannot be read."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    chain = Path(config.tls_cert).read_bytes()
    key = Path(config.tls_key).read_bytes()
    client_ca = None if config.tls_client_ca is None else Path(config.tls_client_ca).read_bytes()
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
