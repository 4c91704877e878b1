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
from dataclasses import dataclass, field
from typing import Any

import grpc

from common.log_text import loggable
from loompb import serving_pb2
from router.backend import Backend, ForwardedCall
from router.backend_pool import BackendPool
from router.metrics import RouterMetrics
from router.policy import Chooser, PromptBlocks
from serving.quotas import UNLIMITED, Admission
from serving.tenants import Tenant

request_log = logging.getLogger("loom.router.requests")
_CACHED_FINISHES = (serving_pb2.FINISH_REASON_STOP, serving_pb2.FINISH_REASON_LENGTH)


@dataclass(slots=True)
class Caller:
    """Who is calling, as far as the backends need to know."""

    tenant: Tenant  # as the router's keys (or x-loom-tenant) say: its quotas apply here
    scope: str  # request ids and prefix hashes are the caller's own
    metadata: tuple[tuple[str, str], ...]  # sent on with every call: key, tenant


@dataclass(slots=True)
class Generation:
    """One Generate or GenerateStream call at the router."""

    request: serving_pb2.GenerateRequest  # as forwarded: with its request_id
    caller: Caller
    streaming: bool
    arrived: float  # time.perf_counter() when it reached the router
    prompt: PromptBlocks | None = None  # for prefix routing
    admission: Admission = UNLIMITED  # the caller's quotas, charged as tokens come
    backend: Backend | None = None  # where it runs now (Abort looks it up)
    tried: list[Backend] = field(default_factory=list)

    @property
    def method(self) -> str:
        return "GenerateStream" if self.streaming else "Generate"


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

    async def generate(self, gen: Generation, context: Any) -> serving_pb2.GenerateResponse | None:
        """The reply of a unary call (None for a stream, whose messages went out as they
        came); ends the call with the backend's status when it fails."""
        for attempt in range(self.retries + 1):
            candidates = [b for b in self.pool.serving() if b not in gen.tried]
            route = self.chooser.choose(candidates, gen.prompt)
            if route is None:
                gen.admission.cancel()
                await context.abort(grpc.StatusCode.UNAVAILABLE, self.none_serving())
            backend = gen.backend = route.backend
            if attempt == 0:
                added = time.perf_counter() - gen.arrived
                self.metrics.added_latency.labels(gen.method).observe(added)
            self.metrics.decisions.labels(backend.address, route.decision).inc()
            self.metrics.requests.labels(backend.address, gen.method).inc()
            gen.tried.append(backend)
            try:
                reply = await self._forward(gen, context, can_retry=attempt < self.retries)
            except _Retry:
                self.metrics.retries.labels(backend.address).inc()
                continue
            status = reply.code.name if isinstance(reply, _Failure) else "OK"
            self._log(gen, route.decision, status)
            if isinstance(reply, _Failure):
                self.metrics.errors.labels(backend.address, gen.method, status).inc()
                await context.abort(reply.code, reply.details, trailing_metadata=reply.trailers)
            return reply
        raise AssertionError("unreachable: the last attempt returns or aborts")

    def none_serving(self) -> str:
        states = ", ".join(
            f"{b.address} {b.state.value}" + f" ({b.reason})" * bool(b.reason)
            for b in self.pool.backends
        )
        return f"no backend is serving; backends: {states}"

    async def _forward(
        self, gen: Generation, context: Any, can_retry: bool
    ) -> serving_pb2.GenerateResponse | _Failure | None:
        backend = gen.backend
        assert backend is not None
        stub_method = backend.stub.GenerateStream if gen.streaming else backend.stub.Generate
        timeout = context.time_remaining()
        call = stub_method(gen.request, timeout=timeout, metadata=gen.caller.metadata)
        forwarded = ForwardedCall(call)
        backend.calls.add(forwarded)
        in_flight = self.metrics.in_flight.labels(backend.address)
        in_flight.inc()
        output: list[int] = []
        finish = serving_pb2.FINISH_REASON_UNSPECIFIED
        try:
            if gen.streaming:
                async for reply in call:
                    output.extend(reply.token_ids)
                    gen.admission.charge(len(reply.token_ids))
                    finish = reply.finish_reason or finish
                    await context.write(reply)
                result = None
            else:
                result = await call
                output, finish = list(result.token_ids), result.finish_reason
                gen.admission.charge(len(output))
        except asyncio.CancelledError:
            if forwarded.lost is None:
                raise  # the caller went away, or its deadline passed: `finally` cancels
            return _Failure(grpc.StatusCode.UNAVAILABLE, forwarded.lost)
        except grpc.aio.AioRpcError as err:
            return self._failed(gen, err, bool(output), can_retry)
        finally:
            backend.calls.discard(forwarded)
            in_flight.dec()
            call.cancel()  # no-op once it has ended
        if gen.prompt is not None and backend.index is not None and finish in _CACHED_FINISHES:
            hashes = gen.prompt.with_output(backend.index.block_size, output)
            self.chooser.touch(backend, hashes)
        return result

    def _failed(
        self, gen: Generation, err: grpc.aio.AioRpcError, replied: bool, can_retry: bool
    ) -> _Failure:
        """What to answer for a backend's error status; raises _Retry to try another."""
        assert gen.backend is not None
        if err.code() == grpc.StatusCode.UNAVAILABLE:
            self.pool.suspect(gen.backend, err.details() or "UNAVAILABLE")
            others = [b for b in self.pool.serving() if b not in gen.tried]
            if not replied and can_retry and others:
                raise _Retry from err
        if not replied:
            gen.admission.cancel()  # refused: as if the router had never admitted it
        trailers = tuple((key, value) for key, value in (err.trailing_metadata() or ()))
        return _Failure(err.code(), err.details() or "", trailers)

    def _log(self, gen: Generation, decision: str, status: str) -> None:
        assert gen.backend is not None
        request_log.info(
            "request %s/%s tenant=%s backend=%s decision=%s status=%s e2e=%.1fms",
            loggable(gen.caller.scope),
            loggable(gen.request.request_id),
            loggable(gen.caller.tenant.name),
            gen.backend.address,
            decision,
            status,
            (time.perf_counter() - gen.arrived) * 1000,
        )
