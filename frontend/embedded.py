"""A Frontend on its own thread and event loop: for tests, and for programs that embed a
server in synchronous code (`serve_in_thread`)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from frontend.config import FrontendConfig
from frontend.server import Frontend
from serving.server_thread import ServerThread


class ServerHandle(ServerThread):
    """A Frontend running on its own thread and event loop (serving/server_thread.py), with
    `.frontend`, `.engine`, `.http_port` and `.base_url` beside `.port`, `.target`,
    `.metrics_port` and `.stop(grace)`."""

    def __init__(self, frontend: Frontend) -> None:
        super().__init__(frontend, thread_name="grpc-frontend")
        self.frontend = frontend
        self.engine = frontend.engine

    @property
    def http_port(self) -> int | None:
        return self.frontend.http_port

    @property
    def base_url(self) -> str | None:
        """The OpenAI-compatible API's base URL (`http://127.0.0.1:PORT/v1`), when served."""
        return self.frontend.base_url

    def __enter__(self) -> ServerHandle:
        return self


def serve_in_thread(
    engine: Any, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> ServerHandle:
    """Start a server for `engine` on a background thread and return once it is SERVING.

    `options` are the other FrontendConfig fields: api_keys or tenants, tls_cert, tls_key,
    tls_client_ca, metrics_port, http_port (the OpenAI-compatible API; `handle.base_url`),
    shutdown_timeout, max_request_bytes, max_step_failures.
    The engine's own limits (max_queued_requests, ...) are set where the engine is built.
    """
    known = {f.name for f in fields(FrontendConfig)} - {"host", "port"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown server options: {', '.join(sorted(unknown))}")
    handle = ServerHandle(Frontend(engine, FrontendConfig(host=host, port=port, **options)))
    handle._start()
    return handle
