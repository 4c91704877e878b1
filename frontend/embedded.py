"""A Frontend on its own thread and event loop: for tests, and for programs that embed a
server in synchronous code (`serve_in_thread`)."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import fields
from typing import Any

from frontend.config import FrontendConfig
from frontend.server import Frontend


class ServerHandle:
    """A Frontend running on its own thread and event loop. Stable API for tests and
    embedding: `.port`, `.target`, `.metrics_port`, `.engine`, `.stop(grace)`, and use as
    a context manager (stop on exit)."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.engine = frontend.engine
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="grpc-frontend", daemon=True)

    @property
    def port(self) -> int:
        assert self.frontend.port is not None
        return self.frontend.port

    @property
    def target(self) -> str:
        return self.frontend.target

    @property
    def metrics_port(self) -> int | None:
        return self.frontend.metrics_port

    @property
    def http_port(self) -> int | None:
        return self.frontend.http_port

    @property
    def base_url(self) -> str | None:
        """The OpenAI-compatible API's base URL (`http://127.0.0.1:PORT/v1`), when served."""
        return self.frontend.base_url

    def _start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        self._stop_requested = asyncio.Event()
        try:
            await self.frontend.start()
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            return
        self._started.set()
        await self._stop_requested.wait()

    def stop(self, grace: float | None = None) -> None:
        """Drain as on SIGTERM: in-flight requests get `grace` seconds (default: the
        shutdown_timeout option), then are aborted. Blocks until the server has stopped."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.frontend.drain(grace), self._loop)
        future.result()
        assert self._stop_requested is not None
        self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
