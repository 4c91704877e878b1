"""A gRPC server object running on its own thread and event loop: how tests and programs with
no event loop of their own embed the engine's server (frontend.server.ServerHandle) or the
router (router.server.RouterHandle). No engine code here.

The object needs `async start()`, `async drain(grace)` and `port`, `target`, `metrics_port`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class ServerThread:
    """Stable API for tests and embedding: `.port`, `.target`, `.metrics_port`,
    `.stop(grace)`, and use as a context manager (stop on exit)."""

    def __init__(self, server: Any, thread_name: str) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._stop_requested: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def target(self) -> str:
        return self.server.target

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

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
            await self.server.start()
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
        future = asyncio.run_coroutine_threadsafe(self.server.drain(grace), self._loop)
        future.result()
        assert self._stop_requested is not None
        self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join()

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
