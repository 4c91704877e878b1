"""A Prometheus registry's /metrics over HTTP (or HTTPS, and mutual TLS), for the engine's
server and the router's."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from serving.server_config import ServerConfig


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry, thread_name: str) -> None:
        self.registry = registry
        self.thread_name = thread_name  # of the thread that shuts the endpoint down
        self._server: Any = None

    def serve(self, config: ServerConfig) -> int:
        """Expose /metrics where the server's settings say (metrics_host or host,
        metrics_port; 0 picks a free port), over TLS with metrics_tls; returns the port."""
        assert config.metrics_port is not None
        tls: dict[str, Any] = {}
        if config.metrics_tls:
            tls = {
                "certfile": config.tls_cert,
                "keyfile": config.tls_key,
                "client_cafile": config.tls_client_ca,
                "client_auth_required": config.tls_client_ca is not None,
            }
        host = config.metrics_host or config.host
        server, _thread = start_http_server(
            config.metrics_port, addr=host, registry=self.registry, **tls
        )
        self._server = server
        return server.server_port

    def close(self) -> None:
        """Stop serving, without waiting for it."""
        if self._server is None:
            return
        server, self._server = self._server, None

        def shut() -> None:
            server.shutdown()  # waits up to one poll interval (0.5 s) for serve_forever
            server.server_close()

        threading.Thread(target=shut, name=self.thread_name, daemon=True).start()
