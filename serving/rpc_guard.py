"""What a caller cannot make a gRPC server log, on every RPC of every service it serves (its
own API, health, reflection), before the servicer sees the call:

- request bytes that do not decode as the method's message: INVALID_ARGUMENT, and one short
  warning line at most every `WARNING_INTERVAL_S` seconds (saying how many it left out);
- a method the server declares but does not implement (the router's ApplyChatTemplate,
  health's List): UNIMPLEMENTED, and nothing logged.

Left alone, grpcio answers the first UNKNOWN (grpc.aio) or INTERNAL (grpc.server), the second
UNIMPLEMENTED, and logs a traceback for each call, so anyone who can open a connection can
flood the log. The guard is a server interceptor: it gives each method handler a request
deserializer that returns a marker instead of raising, and a behaviour that refuses the marker
and turns the generated stubs' NotImplementedError into its status.

    server = grpc.aio.server(interceptors=[AsyncRpcGuard()])     # the engine, the router
    server = grpc.server(pool, interceptors=[RpcGuard()])         # the worker
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc

from common.log_text import loggable

log = logging.getLogger("loom.grpc")

WARNING_INTERVAL_S = 10.0
_HANDLER_OF = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
_END = object()  # a synchronous response iterator is exhausted


class Undecodable:
    """What the guarded deserializer returns for bytes its message type cannot parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class WarningThrottle:
    """At most one warning per `interval_s`; the next one says how many it left out."""

    def __init__(
        self, interval_s: float = WARNING_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at: float | None = None
        self._left_out = 0

    def take(self) -> int | None:
        """None when a warning went out less than `interval_s` ago (this one is counted as
        left out); else how many were left out since the last one, which this one says."""
        with self._lock:
            now = self._clock()
            if self._next_at is not None and now < self._next_at:
                self._left_out += 1
                return None
            left_out, self._left_out = self._left_out, 0
            self._next_at = now + self.interval_s
            return left_out

    def warn(self, logger: logging.Logger, message: str) -> bool:
        """Log `message` unless one was logged less than `interval_s` ago; True if logged."""
        left_out = self.take()
        if left_out is None:
            return False
        logger.warning("%s%s", message, left_out_note(left_out))
        return True


def left_out_note(left_out: int) -> str:
    return f" ({left_out} more since the last such warning)" if left_out else ""


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # whatever the parser says of these bytes
            return Undecodable(f"{type(exc).__name__}: {exc}")

    return deserialize


class _Guard:
    """What both interceptors share: the refusals, and the guarded handler of each method."""

    def __init__(self, throttle: WarningThrottle | None = None) -> None:
        self.throttle = throttle or WarningThrottle()
        self._guarded: dict[str, tuple[Any, Any]] = {}  # method -> (handler, guarded handler)

    def undecodable(self, method: str, bad: Undecodable, context: Any) -> str:
        """Warn (throttled); the details of the INVALID_ARGUMENT to answer."""
        self.throttle.warn(
            log,
            f"undecodable request to {loggable(method)} from {loggable(context.peer())}: "
            f"{loggable(bad.error)}"
        )
        return f"the request does not decode: {bad.error}"[:300]

    @staticmethod
    def unimplemented(method: str) -> str:
        return f"{method} is not implemented by this server"

    def guard(self, method: str, handler: Any) -> Any:
        if handler is None or handler.request_deserializer is None:
            return handler  # an unknown method, or one that reads the raw bytes itself
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        streaming = (handler.request_streaming, handler.response_streaming)
        behaviour = (
            handler.unary_unary
            or handler.unary_stream
            or handler.stream_unary
            or handler.stream_stream
        )
        wrapped = _HANDLER_OF[streaming](
            self.guard_behaviour(method, behaviour, *streaming),
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._guarded[method] = (handler, wrapped)
        return wrapped

    def guard_behaviour(
        self, method: str, behaviour: Any, streams_in: bool, streams_out: bool
    ) -> Any:
        raise NotImplementedError


class RpcGuard(_Guard, grpc.ServerInterceptor):
    """For a grpc.server (thread pool): `context.abort` raises."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        return self.guard(handler_call_details.method, continuation(handler_call_details))

    def guard_behaviour(
        self, method: str, behaviour: Any, streams_in: bool, streams_out: bool
    ) -> Any:
        def check(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                details = self.undecodable(method, request, context)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)
            return request

        def checked(requests: Iterator[Any], context: Any) -> Iterator[Any]:
            for request in requests:
                yield check(request, context)

        def answer(request: Any, context: Any) -> Any:
            argument = checked(request, context) if streams_in else check(request, context)
            try:
                return behaviour(argument, context)
            except NotImplementedError:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, self.unimplemented(method))

        return answer


class AsyncRpcGuard(_Guard, grpc.aio.ServerInterceptor):
    """For a grpc.aio server: each guarded behaviour is a coroutine, or an async generator
    where the one it wraps yields its responses; a synchronous behaviour (a generated stub the
    servicer does not override) runs on a thread, as grpc.aio would run it."""

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        return self.guard(handler_call_details.method, handler)

    def guard_behaviour(
        self, method: str, behaviour: Any, streams_in: bool, streams_out: bool
    ) -> Any:
        async def check(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                details = self.undecodable(method, request, context)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details)
            return request

        async def checked(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async for request in requests:
                yield await check(request, context)

        async def argument(request: Any, context: Any) -> Any:
            return checked(request, context) if streams_in else await check(request, context)

        async def unimplemented(context: Any) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, self.unimplemented(method))

        async def on_thread(call: Callable[[], Any]) -> Any:
            return await asyncio.get_running_loop().run_in_executor(None, call)

        async def responses(request: Any, context: Any) -> AsyncIterator[Any]:
            given = await argument(request, context)
            try:
                if inspect.isasyncgenfunction(behaviour):
                    async for response in behaviour(given, context):
                        yield response
                    return
                iterator = iter(await on_thread(functools.partial(behaviour, given, context)))
                while (response := await on_thread(lambda: next(iterator, _END))) is not _END:
                    yield response
            except NotImplementedError:
                await unimplemented(context)

        async def response(request: Any, context: Any) -> Any:
            given = await argument(request, context)
            try:
                if inspect.iscoroutinefunction(behaviour):
                    return await behaviour(given, context)
                return await on_thread(functools.partial(behaviour, given, context))
            except NotImplementedError:
                await unimplemented(context)

        # A coroutine that streams writes with context.write: the guard stays a coroutine.
        streams = streams_out and not inspect.iscoroutinefunction(behaviour)
        return responses if streams else response
