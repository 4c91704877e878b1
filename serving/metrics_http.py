"""A Prometheus registry's /metrics over plain HTTP, for the engine's server and the router's."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry, thread_name: str) -> None:
        self.registry = registry
        self.thread_name = thread_name  # of the thread that shuts the endpoint down
        self._server: Any = None

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on host:port (0 picks a free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
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
