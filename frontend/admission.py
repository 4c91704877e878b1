"""Admission and delivery shared by the gRPC and the HTTP APIs; imports no grpc.

Every check happens before the engine queues anything, so a refused request costs nothing:
the server is open (not draining, engine loop alive), then the engine's validation of the
prompt and sampling parameters, then the tenant's quotas (serving/quotas.py), then the
queue. A refusal is a `Refused` carrying the gRPC status name of the README's error table;
the gRPC servicer answers with that status, the HTTP routes with the code it maps to.

    admitter.check_open()                                    # Refused(UNAVAILABLE)
    call = admitter.admit(tenant, prompt, params, request_id, priority)  # or Refused
    calls = admitter.admit_all(tenant, prompts, params)      # one call's prompts, together
    try:
        delta = await admitter.next_delta(call)              # Refused(INTERNAL, ...)
    finally:
        admitter.release(call)                               # aborts it if unfinished
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass

from common.checks import integer
from common.log_text import loggable
from contract.sampling import InvalidFieldError, SamplingParams
from frontend.async_engine import AsyncEngine, EngineDeadError, RequestStream
from frontend.metrics import ServingMetrics
from scheduler.errors import CapacityError, DuplicateRequestError, LoraNotFoundError
from scheduler.outputs import RequestDelta
from scheduler.request import Request
from serving.quotas import Admission, QuotaExceeded, Quotas
from serving.tenants import Tenant

log = logging.getLogger(__name__)


_check_deadline_ms = integer(1, optional=True)


class Refused(Exception):
    """A call refused at admission or failed after it. `status` is a gRPC status name
    (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...); `param` the field at fault when one is."""

    def __init__(
        self,
        status: str,
        message: str,
        *,
        param: str | None = None,
        limit: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.limit = limit  # the quota a RESOURCE_EXHAUSTED refusal was over, if any
        self.retry_after_s = retry_after_s  # when waiting helps

    @property
    def retry_after_ms(self) -> int | None:
        return None if self.retry_after_s is None else max(1, math.ceil(self.retry_after_s * 1e3))

    @classmethod
    def invalid(cls, exc: ValueError) -> Refused:
        param = exc.param if isinstance(exc, InvalidFieldError) else None
        return cls("INVALID_ARGUMENT", str(exc), param=param)


class AdmissionGate:
    """Counts the generation calls in flight, and closes admission while draining."""

    def __init__(self) -> None:
        self.draining = False
        self.aborted_by_shutdown = False  # in-flight requests were cut off after the timeout
        self.num_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.num_in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.num_in_flight -= 1
        if self.num_in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


@dataclass(slots=True)
class AdmittedCall:
    """One generation request the server admitted."""

    stream: RequestStream
    request_id: str  # as the caller knows it (the engine's req_id adds the tenant)
    admission: Admission
    prompt_token_ids: list[int]  # as the engine tokenized the prompt


class Admitter:
    def __init__(
        self,
        async_engine: AsyncEngine,
        gate: AdmissionGate,
        quotas: Quotas,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.async_engine = async_engine
        self.gate = gate
        self.quotas = quotas
        self.metrics = metrics

    def check_open(self) -> None:
        if self.gate.draining:
            raise Refused("UNAVAILABLE", "server is shutting down")
        if not self.async_engine.alive:
            reason = self.async_engine.stop_reason
            raise Refused(
                "UNAVAILABLE",
                "the engine loop is not running" + (f": {reason}" if reason else ""),
            )
        if not self.async_engine.engine.worker_available:
            raise Refused("UNAVAILABLE", "the worker is unavailable (reconnecting); retry")

    def admit(
        self,
        tenant: Tenant,
        prompt: str | list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int | None = None,
        lora: str | None = None,
        deadline_ms: int | None = None,
        call_time_left_s: float | None = None,
    ) -> AdmittedCall:
        """Queue one request for `tenant`, or raise Refused with the status to answer.
        `deadline_ms` (else the tenant's default) and the call's own deadline
        (`call_time_left_s`, gRPC's) bound when it must be finished: the earlier applies."""
        [call] = self.admit_all(
            tenant, [prompt], params, [request_id], priority, lora=lora,
            deadline_ms=deadline_ms, call_time_left_s=call_time_left_s,
        )  # fmt: skip
        return call

    def resolve_lora(self, tenant: Tenant, requested: str | None) -> str | None:
        """The adapter a call runs on: the one it names, else its tenant's default; None for
        the base model. Refused PERMISSION_DENIED for an adapter outside the tenant's list
        (whether or not it exists), NOT_FOUND for one the engine does not serve."""
        name = requested or tenant.default_lora
        if name is None:
            return None
        if tenant.loras is not None and name not in tenant.loras:
            raise Refused(
                "PERMISSION_DENIED", f"tenant {tenant.name!r} may not use the adapter {name!r}"
            )
        try:
            self.async_engine.engine.loras.get(name)
        except LoraNotFoundError as exc:
            raise Refused("NOT_FOUND", str(exc)) from None
        return name

    def admit_all(
        self,
        tenant: Tenant,
        prompts: list[str | list[int]],
        params: SamplingParams,
        request_ids: list[str | None] | None = None,
        priority: int | None = None,
        lora: str | None = None,
        deadline_ms: int | None = None,
        call_time_left_s: float | None = None,
    ) -> list[AdmittedCall]:
        """Queue the prompts of one call together, or none of them: every prompt is
        validated, then the tenant's quotas take the whole call (its prompts x n sequences)
        at once, then all are queued, each with the call's deadline (as in `admit`). `lora`
        names the adapter the caller asked for (see `resolve_lora`). Raises Refused with the
        status to answer."""
        self.check_open()
        lora = self.resolve_lora(tenant, lora)
        deadline_s = self._deadline_s(tenant, deadline_ms, call_time_left_s)
        request_ids = [rid or uuid.uuid4().hex for rid in request_ids or [None] * len(prompts)]
        # Ids are scoped by tenant: no request id can name another tenant's request.
        req_ids = [f"{tenant.name}/{request_id}" for request_id in request_ids]
        holds: list[Admission] = []
        validated: list[Request] = []

        def admit(reqs: list[Request]) -> None:  # validated, not yet queued: quotas decide
            first = reqs[0].params
            num_prompt = sum(len(req.prompt_token_ids) for req in reqs)
            holds.append(
                self.quotas.admit(tenant, num_prompt, first.max_tokens, first.n, len(reqs))
            )
            validated.extend(reqs)

        try:
            streams = self.async_engine.add_requests(
                prompts,
                params,
                req_ids=req_ids,
                tenant=tenant.name,
                priority=tenant.priority if priority is None else priority,
                admit=admit,
                lora=lora,
                deadline_s=deadline_s,
            )
        except LoraNotFoundError as exc:  # unloaded since resolve_lora looked
            for hold in holds:
                hold.cancel()
            raise Refused("NOT_FOUND", str(exc)) from exc
        except (QuotaExceeded, DuplicateRequestError, CapacityError, EngineDeadError) as exc:
            for hold in holds:  # admitted, then refused by the engine (queue full)
                hold.cancel()
            raise self._refusal(exc, tenant, request_ids[0]) from exc
        except ValueError as exc:
            raise Refused.invalid(exc) from exc
        [hold] = holds  # one for the whole call; releasing it is idempotent
        calls = []
        for stream, request_id, req in zip(streams, request_ids, validated, strict=True):
            self.gate.enter()
            calls.append(AdmittedCall(stream, request_id, hold, req.prompt_token_ids))
        return calls

    @staticmethod
    def _deadline_s(
        tenant: Tenant, deadline_ms: int | None, call_time_left_s: float | None
    ) -> float | None:
        try:
            deadline_ms = _check_deadline_ms("deadline_ms", deadline_ms)
        except ValueError as exc:
            raise Refused.invalid(exc) from exc
        if deadline_ms is None:
            deadline_ms = tenant.deadline_ms
        deadline_s = None if deadline_ms is None else deadline_ms / 1e3
        if call_time_left_s is not None:
            if call_time_left_s <= 0:
                raise Refused("DEADLINE_EXCEEDED", "the call's deadline passed before admission")
            deadline_s = (
                call_time_left_s if deadline_s is None else min(deadline_s, call_time_left_s)
            )
        return deadline_s

    def _refusal(self, exc: Exception, tenant: Tenant, request_id: str) -> Refused:
        if isinstance(exc, QuotaExceeded):
            if self.metrics is not None:
                self.metrics.observe_quota_rejection(tenant.name, exc.limit)
            return Refused(
                "RESOURCE_EXHAUSTED", exc.message, limit=exc.limit, retry_after_s=exc.retry_after_s
            )
        if isinstance(exc, DuplicateRequestError):
            return Refused(
                "ALREADY_EXISTS", f"request_id {request_id!r} is already in use by a live request"
            )
        if isinstance(exc, CapacityError):
            return Refused("RESOURCE_EXHAUSTED", str(exc))
        return Refused("UNAVAILABLE", str(exc))  # the engine loop stopped

    async def next_delta(self, call: AdmittedCall, timeout: float | None = None) -> RequestDelta:
        """The request's next delta, its tokens charged to the tenant. Refused when the
        request failed (INTERNAL; UNAVAILABLE when its worker could not be reached), the
        server cut it off while shutting down (UNAVAILABLE) or `timeout` seconds passed first
        (DEADLINE_EXCEEDED; the request is aborted)."""
        stream = call.stream
        try:
            if timeout is None:
                delta = await anext(stream)
            else:
                delta = await asyncio.wait_for(anext(stream), max(timeout, 0.0))
        except asyncio.TimeoutError:
            self.async_engine.abort(stream.req_id)
            raise Refused("DEADLINE_EXCEEDED", "deadline exceeded; aborted") from None
        call.admission.charge(len(delta.token_ids))
        if delta.finish_reason == "deadline":  # the engine ended it (scheduler/deadlines.py)
            raise Refused("DEADLINE_EXCEEDED", f"request {call.request_id} {delta.error}")
        if delta.finish_reason == "error":
            log.error("request %s failed: %s", loggable(stream.req_id), loggable(delta.error))
            # A worker that could not be reached: the caller may retry elsewhere.
            status = "UNAVAILABLE" if delta.unavailable else "INTERNAL"
            raise Refused(status, f"request {call.request_id} failed: {delta.error}")
        if delta.finish_reason == "abort" and self.gate.aborted_by_shutdown:
            raise Refused(
                "UNAVAILABLE",
                f"request {call.request_id} aborted: the server shut down before it finished",
            )
        return delta

    def release(self, call: AdmittedCall) -> None:
        """Reached on success, on an error, and when the caller went away (cancel,
        disconnect, deadline): an unfinished request must not keep its blocks."""
        if not call.stream.finished:
            self.async_engine.abort(call.stream.req_id)
        call.admission.release()
        self.gate.leave()
