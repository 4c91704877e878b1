"""A generation call through the router: choose a backend, forward the request with the
caller's key, tenant and remaining deadline, and pass back what the backend answers (each
stream message as it comes, or its status and trailers).

Cancelling at the router cancels the backend's call, which aborts the request there and frees
its blocks. A backend that refuses a call UNAVAILABLE before sending any output (it drains,
or has just gone away) is made suspect and the call is tried on another, `retries` times. A
backend given up on mid-call (BackendPool) ends its calls UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from loompb import serving_pb2
from router.backend import Backend, ForwardedCall
from router.backend_pool import BackendPool
from router.metrics import RouterMetrics
from router.policy import Chooser, PromptBlocks

request_log = logging.getLogger("loom.router.requests")
_CACHED_FINISHES = (serving_pb2.FINISH_REASON_STOP, serving_pb2.FINISH_REASON_LENGTH)


@dataclass(slots=True)
class Caller:
    """Who is calling, as far as the backends need to know."""

    scope: str  # request ids and prefix hashes are the caller's tenant's own
    metadata: tuple[tuple[str, str], ...]  # sent on with every call: key, tenant


@dataclass(slots=True)
class _Failure:
    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, Any], ...] = ()


class _Retry(Exception):
    """The backend refused the call UNAVAILABLE before any output: try another."""


class Relay:
    def __init__(
        self, pool: BackendPool, chooser: Chooser, metrics: RouterMetrics, retries: int
    ) -> None:
        self.pool = pool
        self.chooser = chooser
        self.metrics = metrics
        self.retries = retries

    async def generate(
        self,
        request: serving_pb2.GenerateRequest,
        context: Any,
        caller: Caller,
        prompt: PromptBlocks | None,
        arrived: float,
        on_route: Callable[[Backend], None],
        streaming: bool,
    ) -> serving_pb2.GenerateResponse | None:
        """The reply of a unary call (None for a stream, whose messages went out as they
        came); ends the call with the backend's status when it fails."""
        method = "GenerateStream" if streaming else "Generate"
        tried: list[Backend] = []
        for attempt in range(self.retries + 1):
            candidates = [b for b in self.pool.serving() if b not in tried]
            route = self.chooser.choose(candidates, prompt)
            if route is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, self._none_serving())
            backend = route.backend
            if attempt == 0:
                self.metrics.added_latency.labels(method).observe(time.perf_counter() - arrived)
            self.metrics.decisions.labels(backend.address, route.decision).inc()
            self.metrics.requests.labels(backend.address, method).inc()
            on_route(backend)
            tried.append(backend)
            can_retry = attempt < self.retries
            try:
                reply = await self._forward(
                    backend, request, context, caller, prompt, streaming, can_retry, tried
                )
            except _Retry:
                self.metrics.retries.labels(backend.address).inc()
                continue
            if isinstance(reply, _Failure):
                self.metrics.errors.labels(backend.address, method, reply.code.name).inc()
                self._log(caller, request, backend, route.decision, reply.code.name, arrived)
                await context.abort(reply.code, reply.details, trailing_metadata=reply.trailers)
            self._log(caller, request, backend, route.decision, "OK", arrived)
            return reply
        raise AssertionError("unreachable: the last attempt returns or aborts")

    def _none_serving(self) -> str:
        states = ", ".join(
            f"{b.address} {b.state.value}" + f" ({b.reason})" * bool(b.reason)
            for b in self.pool.backends
        )
        return f"no backend is serving; backends: {states}"

    async def _forward(
        self,
        backend: Backend,
        request: serving_pb2.GenerateRequest,
        context: Any,
        caller: Caller,
        prompt: PromptBlocks | None,
        streaming: bool,
        can_retry: bool,
        tried: list[Backend],
    ) -> serving_pb2.GenerateResponse | _Failure | None:
        stub_method = backend.stub.GenerateStream if streaming else backend.stub.Generate
        call = stub_method(request, timeout=context.time_remaining(), metadata=caller.metadata)
        forwarded = ForwardedCall(call)
        backend.calls.add(forwarded)
        gauge = self.metrics.in_flight.labels(backend.address)
        gauge.inc()
        output: list[int] = []
        finish = serving_pb2.FINISH_REASON_UNSPECIFIED
        replied = False
        try:
            if streaming:
                async for reply in call:
                    replied = True
                    output.extend(reply.token_ids)
                    finish = reply.finish_reason or finish
                    await context.write(reply)
                result = None
            else:
                result = await call
                output, finish = list(result.token_ids), result.finish_reason
        except asyncio.CancelledError:
            if forwarded.lost is None:
                raise  # the caller went away, or its deadline passed: `finally` cancels
            return _Failure(grpc.StatusCode.UNAVAILABLE, forwarded.lost)
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                self.pool.suspect(backend, err.details() or "UNAVAILABLE")
                others = [b for b in self.pool.serving() if b not in tried]
                if not replied and can_retry and others:
                    raise _Retry from err
            trailers = tuple((key, value) for key, value in (err.trailing_metadata() or ()))
            return _Failure(err.code(), err.details() or "", trailers)
        finally:
            backend.calls.discard(forwarded)
            gauge.dec()
            call.cancel()  # no-op once it has ended
        if prompt is not None and backend.index is not None and finish in _CACHED_FINISHES:
            self.chooser.touch(backend, prompt.with_output(backend.index.block_size, output))
        return result

    def _log(
        self,
        caller: Caller,
        request: serving_pb2.GenerateRequest,
        backend: Backend,
        decision: str,
        status: str,
        arrived: float,
    ) -> None:
        request_log.info(
            "request %s/%s backend=%s decision=%s status=%s e2e=%.1fms",
            caller.scope,
            request.request_id,
            backend.address,
            decision,
            status,
            (time.perf_counter() - arrived) * 1000,
        )
