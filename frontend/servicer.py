"""The loom.v1.Generation servicer: admission, streaming, and the status code of every refusal.

Every check happens before the engine queues anything, so a refused request costs nothing
(the README's error table lists each status): the tenant (frontend/auth.py), the fields, the
engine's validation, then the tenant's quotas (frontend/quotas.py), then the queue. A request
whose caller goes away (cancel, disconnect, deadline) or that the Abort call names is aborted
in the engine, which frees its blocks at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import grpc

from frontend.async_engine import AsyncEngine, EngineDeadError, RequestStream
from frontend.auth import Authenticator, AuthError
from frontend.metrics import ServingMetrics
from frontend.protocol import (
    MAX_REQUEST_ID_LENGTH,
    add_delta,
    check_input_fields,
    sampling_params,
)
from frontend.quotas import RETRY_AFTER_KEY, Admission, QuotaExceeded, Quotas
from frontend.tenants import Tenant
from loompb import serving_pb2, serving_pb2_grpc
from scheduler.errors import CapacityError, DuplicateRequestError
from scheduler.outputs import RequestDelta
from scheduler.request import (
    MAX_STOP_STRING_LENGTH,
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    Request,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Call:
    """One generation call the servicer admitted."""

    stream: RequestStream
    request_id: str  # as the caller knows it (the engine's req_id adds the tenant)
    admission: Admission


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


class GenerationServicer(serving_pb2_grpc.GenerationServicer):
    def __init__(
        self,
        async_engine: AsyncEngine,
        authenticator: Authenticator,
        gate: AdmissionGate,
        max_request_bytes: int,
        quotas: Quotas | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.async_engine = async_engine
        self.engine = async_engine.engine
        self.authenticator = authenticator
        self.gate = gate
        self.max_request_bytes = max_request_bytes
        self.quotas = quotas if quotas is not None else Quotas()
        self.metrics = metrics

    # ---- generation --------------------------------------------------------------------

    async def Generate(self, request: serving_pb2.GenerateRequest, context: Any) -> Any:
        call = await self._admit(request, context)
        response = serving_pb2.GenerateResponse(request_id=call.request_id)
        try:
            while True:
                delta = await self._next_delta(call, context)
                add_delta(response, delta)
                if delta.finished:
                    return response
        finally:
            self._release(call)

    async def GenerateStream(self, request: serving_pb2.GenerateRequest, context: Any) -> Any:
        call = await self._admit(request, context)
        try:
            while True:
                delta = await self._next_delta(call, context)
                response = serving_pb2.GenerateResponse(request_id=call.request_id)
                add_delta(response, delta)
                await context.write(response)
                if delta.finished:
                    return
        finally:
            self._release(call)

    async def _admit(self, request: serving_pb2.GenerateRequest, context: Any) -> _Call:
        tenant = await self._tenant(context)
        if self.gate.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if not self.async_engine.alive:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the engine loop is not running")
        if not self.engine.worker_available:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the worker is unavailable (reconnecting); retry"
            )
        request_id = request.request_id or uuid.uuid4().hex
        # Ids are scoped by tenant: no request id can name another tenant's request.
        req_id = f"{tenant.name}/{request_id}"
        admitted: list[Admission] = []

        def admit(req: Request) -> None:  # validated, not yet queued: the quotas decide
            admitted.append(
                self.quotas.admit(tenant, len(req.prompt_token_ids), req.params.max_tokens)
            )

        code = grpc.StatusCode.INVALID_ARGUMENT
        trailers: tuple[tuple[str, str], ...] = ()
        try:
            check_input_fields(request)
            params = sampling_params(request.sampling)
            prompt = request.prompt or list(request.prompt_token_ids)
            priority = request.priority if request.HasField("priority") else tenant.priority
            stream = self.async_engine.add_request(
                prompt, params, req_id=req_id, tenant=tenant.name, priority=priority, admit=admit
            )
        except QuotaExceeded as exc:
            code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message
            if exc.retry_after_ms is not None:
                trailers = ((RETRY_AFTER_KEY, str(exc.retry_after_ms)),)
            if self.metrics is not None:
                self.metrics.observe_quota_rejection(tenant.name, exc.limit)
        except DuplicateRequestError:
            code = grpc.StatusCode.ALREADY_EXISTS
            message = f"request_id {request_id!r} is already in use by a live request"
        except CapacityError as exc:
            code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
        except EngineDeadError as exc:
            code, message = grpc.StatusCode.UNAVAILABLE, str(exc)
        except ValueError as exc:
            message = str(exc)
        else:
            self.gate.enter()
            return _Call(stream, request_id, admitted[0])
        for admission in admitted:  # admitted, then refused by the engine (queue full)
            admission.cancel()
        await context.abort(code, message, trailing_metadata=trailers)
        raise AssertionError("unreachable: context.abort raises")

    async def _next_delta(self, call: _Call, context: Any) -> RequestDelta:
        stream, request_id = call.stream, call.request_id
        remaining = context.time_remaining()
        try:
            if remaining is None:
                delta = await anext(stream)
            else:
                delta = await asyncio.wait_for(anext(stream), max(remaining, 0.0))
        except asyncio.TimeoutError:
            self.async_engine.abort(stream.req_id)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded; aborted")
        call.admission.charge(len(delta.token_ids))
        if delta.finish_reason == "error":
            log.error("request %s failed: %s", stream.req_id, delta.error)
            code = grpc.StatusCode.UNAVAILABLE if delta.unavailable else grpc.StatusCode.INTERNAL
            await context.abort(code, f"request {request_id} failed: {delta.error}")
        if delta.finish_reason == "abort" and self.gate.aborted_by_shutdown:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"request {request_id} aborted: the server shut down before it finished",
            )
        return delta

    def _release(self, call: _Call) -> None:
        # Reached on success, on an error status, and when the call is cancelled (client
        # cancel, disconnect, deadline): an unfinished request must not keep its blocks.
        if not call.stream.finished:
            self.async_engine.abort(call.stream.req_id)
        call.admission.release()
        self.gate.leave()

    async def _tenant(self, context: Any) -> Tenant:
        try:
            return self.authenticator.authenticate(context.invocation_metadata())
        except AuthError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
            raise AssertionError("unreachable: context.abort raises") from exc

    async def Abort(self, request: serving_pb2.AbortRequest, context: Any) -> Any:
        tenant = await self._tenant(context)
        for request_id in request.request_ids:
            if not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request_ids must be 1 to {MAX_REQUEST_ID_LENGTH} characters, "
                    f"got {len(request_id)}",
                )
        aborted = [
            request_id
            for request_id in dict.fromkeys(request.request_ids)  # once each, in order
            if self.async_engine.abort(f"{tenant.name}/{request_id}")
        ]
        return serving_pb2.AbortResponse(aborted_request_ids=aborted)

    # ---- model and tokenizer ------------------------------------------------------------

    async def GetModelInfo(self, request: Any, context: Any) -> serving_pb2.ModelInfo:
        await self._tenant(context)
        info = self.engine.info
        config = self.engine.config
        return serving_pb2.ModelInfo(
            model_name=info.model_name,
            vocab_size=info.vocab_size,
            max_model_len=self.engine.max_model_len,
            bos_token_id=info.bos_id,
            eos_token_id=info.eos_id,
            block_size=info.block_size,
            num_kv_blocks=info.num_kv_blocks,
            kv_cache_capacity_tokens=info.num_kv_blocks * info.block_size,
            dtype=info.dtype,
            device=info.device,
            max_top_logprobs=MAX_TOP_LOGPROBS,
            max_stop_strings=MAX_STOP_STRINGS,
            max_stop_string_length=MAX_STOP_STRING_LENGTH,
            max_request_bytes=self.max_request_bytes,
            max_num_seqs=config.scheduler.max_num_seqs,
            max_num_batched_tokens=config.scheduler.max_num_batched_tokens,
            max_queued_requests=config.scheduler.max_queued_requests or 0,
        )

    async def Tokenize(self, request: serving_pb2.TokenizeRequest, context: Any) -> Any:
        await self._tenant(context)
        tokenizer = self.engine.tokenizer
        token_ids = tokenizer.encode(request.text, add_bos=request.add_bos)
        pieces = [tokenizer.id_to_piece(token_id) for token_id in token_ids]
        return serving_pb2.TokenizeResponse(token_ids=token_ids, pieces=pieces)

    async def Detokenize(self, request: serving_pb2.DetokenizeRequest, context: Any) -> Any:
        await self._tenant(context)
        vocab_size = self.engine.info.vocab_size
        token_ids = list(request.token_ids)
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"token_ids must be in [0, {vocab_size}), got {token_id}",
                )
        tokenizer = self.engine.tokenizer
        return serving_pb2.DetokenizeResponse(
            text=tokenizer.decode(token_ids),
            pieces=[tokenizer.id_to_piece(token_id) for token_id in token_ids],
        )
