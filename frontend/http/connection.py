"""One HTTP connection: uvicorn's h11 protocol, plus a deadline for each request's head, and
uvicorn's warnings about one bad request each throttled as gRPC's are.

uvicorn bounds a connection only while it is idle between requests (`timeout_keep_alive`,
armed when a response completes and disarmed by the next byte) and the size of a head (h11's
16 KiB): a connection that never sends a byte, or that sends its headers one byte a second,
is held for ever. Here a connection must deliver each request's head (request line and
headers) within `header_timeout` seconds of opening, or of the first byte of the next request
on a kept-alive connection; else it is closed.

    HttpServer(..., http=with_header_timeout(10.0))

uvicorn logs a warning for each request it cannot parse (or upgrade): one line at most every
10 seconds here, saying how many it left out (serving/rpc_guard.py's WarningThrottle).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from serving.rpc_guard import WarningThrottle, left_out_note

# What uvicorn warns of once per bad request, so a caller could flood the log with it.
PER_REQUEST_WARNINGS = (
    "Invalid HTTP request received.",
    "Unsupported upgrade request.",
    "No supported WebSocket library detected.",
)


class _HeaderDeadline(H11Protocol):
    header_timeout: float = 10.0  # set per server by with_header_timeout

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and self._awaiting_head():
            self._arm()  # the first byte of another request on a kept-alive connection
        super().data_received(data)
        if not self._awaiting_head():
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            self.transport.close()  # a client this slow is not waiting for a 408


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """The protocol class for uvicorn.Config(http=...), with this deadline."""
    attributes: dict[str, Any] = {"header_timeout": seconds}
    return type("HeaderDeadlineH11Protocol", (_HeaderDeadline,), attributes)


class _ThrottledWarnings(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.throttle = WarningThrottle()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not str(record.msg).startswith(
            PER_REQUEST_WARNINGS
        ):
            return True
        left_out = self.throttle.take()
        if left_out is None:
            return False
        record.msg = f"{record.msg}{left_out_note(left_out)}"
        return True


def throttle_uvicorn_warnings() -> None:
    """Once per process: uvicorn's logger is the process's."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _ThrottledWarnings) for f in logger.filters):
        logger.addFilter(_ThrottledWarnings())
