"""The loom.v1.Generation servicer: admission, streaming, and the status code of every refusal.

Admission is frontend/admission.py's, shared with the HTTP API: every check happens before
the engine queues anything, so a refused request costs nothing (the README's error table
lists each status). A request whose caller goes away (cancel, disconnect, deadline) or that
the Abort call names is aborted in the engine, which frees its blocks at the next step.
"""

from __future__ import annotations

from typing import Any

import grpc

from contract.sampling import MAX_STOP_STRING_LENGTH, MAX_STOP_STRINGS, MAX_TOP_LOGPROBS
from contract.sampling_proto import sampling_from_proto
from frontend.admission import AdmissionGate, AdmittedCall, Admitter, Refused
from frontend.async_engine import AsyncEngine
from frontend.lora_admin import LoraAdmin
from frontend.metrics import ServingMetrics
from frontend.protocol import (
    UnaryResponse,
    add_delta,
    check_input_fields,
)
from loompb import serving_pb2, serving_pb2_grpc
from modelfiles.tokenizer import NoChatTemplateError
from scheduler.outputs import RequestDelta
from serving.auth import Authenticator, AuthError
from serving.quotas import RETRY_AFTER_KEY, Quotas
from serving.request_ids import check_abort_ids
from serving.tenants import Tenant

__all__ = ["AdmissionGate", "GenerationServicer"]


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
        self.admitter = Admitter(async_engine, gate, self.quotas, metrics)
        self.loras = LoraAdmin(self.engine.loras, authenticator)

    # ---- generation --------------------------------------------------------------------

    async def Generate(self, request: serving_pb2.GenerateRequest, context: Any) -> Any:
        call, n = await self._admit(request, context)
        response = UnaryResponse(call.request_id, n)
        try:
            while True:
                delta = await self._next_delta(call, context)
                response.add(delta)
                if delta.finished:
                    return response.response()
        finally:
            self.admitter.release(call)

    async def GenerateStream(self, request: serving_pb2.GenerateRequest, context: Any) -> Any:
        call, _ = await self._admit(request, context)
        try:
            while True:
                delta = await self._next_delta(call, context)
                response = serving_pb2.GenerateResponse(request_id=call.request_id)
                add_delta(response, delta)
                await context.write(response)
                if delta.finished:
                    return
        finally:
            self.admitter.release(call)

    async def _admit(
        self, request: serving_pb2.GenerateRequest, context: Any
    ) -> tuple[AdmittedCall, int]:
        tenant = await self._tenant(context)
        try:
            self.admitter.check_open()
            try:
                check_input_fields(request)
                params = sampling_from_proto(
                    request.sampling, exact=False, defaults=self.engine.tokenizer.sampling_defaults
                )
            except ValueError as exc:
                raise Refused.invalid(exc) from exc
            prompt = request.prompt or list(request.prompt_token_ids)
            priority = request.priority if request.HasField("priority") else None
            deadline_ms = request.deadline_ms if request.HasField("deadline_ms") else None
            call = self.admitter.admit(
                tenant,
                prompt,
                params,
                request.request_id,
                priority,
                lora=request.lora or None,
                deadline_ms=deadline_ms,
                call_time_left_s=context.time_remaining(),
            )
        except Refused as refused:
            await _abort(context, refused)
        return call, params.n

    async def _next_delta(self, call: AdmittedCall, context: Any) -> RequestDelta:
        try:
            return await self.admitter.next_delta(call, context.time_remaining())
        except Refused as refused:
            await _abort(context, refused)
            raise AssertionError("unreachable: context.abort raises") from refused

    async def _tenant(self, context: Any) -> Tenant:
        try:
            return self.authenticator.authenticate(context.invocation_metadata())
        except AuthError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
            raise AssertionError("unreachable: context.abort raises") from exc

    async def Abort(self, request: serving_pb2.AbortRequest, context: Any) -> Any:
        tenant = await self._tenant(context)
        try:
            check_abort_ids(list(request.request_ids))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        aborted = [
            request_id
            for request_id in dict.fromkeys(request.request_ids)  # once each, in order
            if self.async_engine.abort(f"{tenant.name}/{request_id}")
        ]
        return serving_pb2.AbortResponse(aborted_request_ids=aborted)

    async def GetLoad(self, request: serving_pb2.GetLoadRequest, context: Any) -> Any:
        """From the stats the engine loop published after its last step: no engine state
        is read here and no lock is taken, so polling it costs the engine nothing."""
        await self._tenant(context)
        if not self.async_engine.alive:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the engine loop is not running")
        stats = self.async_engine.last_stats
        queries, hits = stats.prefix_cache_queries, stats.prefix_cache_hits
        return serving_pb2.Load(
            num_requests_running=stats.num_running,
            num_requests_waiting=stats.num_waiting,
            num_kv_blocks_used=stats.num_blocks - stats.num_free_blocks,
            num_kv_blocks=stats.num_blocks,
            prefix_cache_queries=queries,
            prefix_cache_hits=hits,
            prefix_cache_hit_rate=hits / queries if queries else 0.0,
            draining=self.gate.draining,
        )

    # ---- model and tokenizer ------------------------------------------------------------

    async def GetModelInfo(self, request: Any, context: Any) -> serving_pb2.ModelInfo:
        tenant = await self._tenant(context)
        info = self.engine.info
        config = self.engine.config
        return serving_pb2.ModelInfo(
            model_name=info.model_name,
            vocab_size=info.vocab_size,
            max_model_len=self.engine.max_model_len,
            bos_token_id=info.bos_id,
            eos_token_id=info.eos_id,
            eos_token_ids=list(self.engine.eos_ids),
            chat_template=self.engine.tokenizer.chat_template or "",
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
            max_n=config.scheduler.max_n,
            default_sampling=serving_pb2.SamplingParams(**self.engine.tokenizer.sampling_defaults),
            lora_adapters=self.loras.visible(tenant),
            max_loras=self.engine.scheduler.max_loras,
            max_lora_rank=info.max_lora_rank,
        )

    # ---- LoRA adapters -------------------------------------------------------------------

    async def LoadLoraAdapter(self, request: Any, context: Any) -> Any:
        tenant = await self._tenant(context)
        try:
            self.loras.load(tenant, request.lora_name, request.lora_path)
        except Refused as refused:
            await _abort(context, refused)
        return serving_pb2.LoadLoraAdapterResponse()

    async def UnloadLoraAdapter(self, request: Any, context: Any) -> Any:
        tenant = await self._tenant(context)
        try:
            self.loras.unload(tenant, request.lora_name)
        except Refused as refused:
            await _abort(context, refused)
        return serving_pb2.UnloadLoraAdapterResponse()

    async def Tokenize(self, request: serving_pb2.TokenizeRequest, context: Any) -> Any:
        await self._tenant(context)
        tokenizer = self.engine.tokenizer
        # add_bos: as Generate tokenizes a text prompt (the tokenizer's rule); else no BOS.
        token_ids = tokenizer.encode(request.text, add_bos=None if request.add_bos else False)
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

    async def ApplyChatTemplate(
        self, request: serving_pb2.ApplyChatTemplateRequest, context: Any
    ) -> serving_pb2.ApplyChatTemplateResponse:
        await self._tenant(context)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        add_generation_prompt = (
            request.add_generation_prompt if request.HasField("add_generation_prompt") else True
        )
        try:
            prompt, token_ids = self.engine.tokenizer.encode_chat(messages, add_generation_prompt)
        except NoChatTemplateError as exc:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"{exc}: send a prompt to Generate instead ({self.engine.info.model_name})",
            )
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return serving_pb2.ApplyChatTemplateResponse(prompt=prompt, prompt_token_ids=token_ids)


async def _abort(context: Any, refused: Refused) -> None:
    """End the call with the refusal's status (a retry hint when waiting helps)."""
    trailers = ()
    if refused.retry_after_ms is not None:
        trailers = ((RETRY_AFTER_KEY, str(refused.retry_after_ms)),)
    await context.abort(
        grpc.StatusCode[refused.status], refused.message, trailing_metadata=trailers
    )
    raise AssertionError("unreachable: context.abort raises")
