"""The deltas of a response's engine requests, as server-sent events or collected, and what
happens when the client goes away: every request still running is aborted (its blocks are
freed at the next step), for a stream as for a plain response."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.requests import Request

from frontend.admission import AdmittedCall, Admitter, Refused
from frontend.http.errors import STATUSES
from scheduler.outputs import RequestDelta

DONE = b"data: [DONE]\n\n"
T = TypeVar("T")


def event(payload: dict) -> bytes:
    """One server-sent event carrying a JSON object."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def error_event(refused: Refused) -> bytes:
    """A failure after the stream began (its 200 is sent): the error object as an event,
    which the OpenAI SDKs raise."""
    status, error_type = STATUSES.get(refused.status, (500, "server_error"))
    error = {"message": refused.message, "type": error_type, "param": None, "code": status}
    return event({"error": error})


class MergedDeltas:
    """The deltas of several admitted calls (the prompts of one completion request) as
    they come, as (call index, delta); `close()` releases every call, aborting those
    unfinished. Iterating raises Refused when a call fails."""

    def __init__(self, admitter: Admitter, calls: list[AdmittedCall]) -> None:
        self._admitter = admitter
        self._calls = calls
        self._queue: asyncio.Queue[tuple[int, RequestDelta | Refused]] = asyncio.Queue()
        self._tasks = [asyncio.ensure_future(self._pump(i, c)) for i, c in enumerate(calls)]
        self._closed = False

    async def _pump(self, index: int, call: AdmittedCall) -> None:
        try:
            while True:
                delta = await self._admitter.next_delta(call)
                self._queue.put_nowait((index, delta))
                if delta.finished:
                    return
        except Refused as refused:
            self._queue.put_nowait((index, refused))

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestDelta]]:
        num_left = len(self._calls)
        while num_left:
            index, item = await self._queue.get()
            if isinstance(item, Refused):
                raise item
            yield index, item
            num_left -= item.finished

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for call in self._calls:
            self._admitter.release(call)


async def sse_body(
    merged: MergedDeltas,
    render: Callable[[int, RequestDelta], Iterable[dict]],
    opening: Iterable[dict] = (),
    closing: Callable[[], Iterable[dict]] = lambda: (),
) -> AsyncIterator[bytes]:
    """The events of a stream, ending with `data: [DONE]`. Starlette cancels this when the
    client disconnects; `finally` then aborts what is still running."""
    try:
        for payload in opening:
            yield event(payload)
        async for index, delta in merged:
            for payload in render(index, delta):
                yield event(payload)
        for payload in closing():
            yield event(payload)
    except Refused as refused:
        yield error_event(refused)
    finally:
        merged.close()
    yield DONE


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run `work` (which reads the engine's deltas) until it ends or the client hangs up,
    whichever is first; a hang-up cancels it (its cleanup aborts the requests)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise ClientGone
    return task.result()


async def _disconnected(request: Request) -> Any:
    while True:  # the body was read already: the next message is the disconnect
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return message
