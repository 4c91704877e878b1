"""The routes of the OpenAI-compatible API: /v1/completions, /v1/chat/completions,
/v1/models, and beside them /health and /metrics.

A generation call is checked as a gRPC one is, in the same order and before anything is
queued: the API key (or x-loom-tenant), the server being open, the body (size, JSON, types),
the model name, the call's size (prompts x n), the engine's limits, the tenant's quotas (for
the whole call), the queue. Each prompt of a completion request is one engine request; they
are queued together or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from frontend.admission import AdmittedCall, Admitter, Refused
from frontend.http.choices import ChatChoice, CompletionChoice
from frontend.http.convert import EngineInputs, chat_inputs, completion_inputs
from frontend.http.errors import HttpError
from frontend.http.logprobs import TokenTexts
from frontend.http.responses import Envelope, model_list
from frontend.http.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    TokenizeRequest,
    parse_body,
)
from frontend.http.streaming import ClientGone, MergedDeltas, sse_body, unless_disconnected
from frontend.lora_admin import LoraAdmin
from frontend.metrics import ServingMetrics
from scheduler.outputs import RequestDelta, Usage
from serving.auth import Authenticator, AuthError
from serving.tenants import Tenant

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class OpenAIRoutes:
    def __init__(
        self,
        admitter: Admitter,
        authenticator: Authenticator,
        metrics: ServingMetrics,
        max_request_bytes: int,
        max_prompts_per_request: int,
    ) -> None:
        self.admitter = admitter
        self.authenticator = authenticator
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.max_prompts_per_request = max_prompts_per_request
        self.engine = admitter.async_engine.engine
        self.model = self.engine.info.model_name
        self.created = int(time.time())
        self.texts = TokenTexts(self.engine.tokenizer)
        self.lora_admin = LoraAdmin(self.engine.loras, authenticator)

    # ---- plain routes ------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        self.admitter.check_open()  # 503 while draining or once the engine loop stopped
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        tenant = self._tenant(request)
        loras = self.lora_admin.visible(tenant)
        return JSONResponse(model_list(self.model, self.created, self.engine, loras))

    async def tokenize(self, request: Request) -> Response:
        """vLLM's /tokenize: a text's token ids as a completion's prompt gets them."""
        self._tenant(request)
        body: TokenizeRequest = parse_body(TokenizeRequest, await self._body(request))
        self._check_model(body.model)
        add_bos = None if body.add_special_tokens else False
        ids = self.engine.tokenizer.encode(body.prompt, add_bos=add_bos)
        return JSONResponse(
            {"count": len(ids), "max_model_len": self.engine.max_model_len, "tokens": ids}
        )

    # ---- generation --------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        tenant = self._tenant(request)
        self.admitter.check_open()
        body: CompletionRequest = parse_body(CompletionRequest, await self._body(request))
        inputs = completion_inputs(body, self.engine.tokenizer.sampling_defaults)
        calls = self._admit_all(tenant, inputs, body.priority, body.model, body.deadline_ms)
        n = inputs.params.n
        choices = [
            CompletionChoice(
                i * n + j,
                call.prompt_token_ids,
                self._echo_text(prompt) if body.echo else None,
                body.logprobs is not None,
                self.texts,
                self.engine.tokenizer,
            )
            for i, (prompt, call) in enumerate(zip(inputs.prompts, calls, strict=True))
            for j in range(n)
        ]
        model = body.model or self.model
        envelope = Envelope(f"cmpl-{calls[0].request_id}", int(time.time()), model, False)
        return await self._respond(request, body, calls, n, choices, envelope)

    async def chat_completions(self, request: Request) -> Response:
        tenant = self._tenant(request)
        self.admitter.check_open()
        body: ChatCompletionRequest = parse_body(ChatCompletionRequest, await self._body(request))
        inputs = chat_inputs(body, self.engine.tokenizer, self.engine.max_model_len, self.model)
        calls = self._admit_all(tenant, inputs, body.priority, body.model, body.deadline_ms)
        n = inputs.params.n
        choices = [ChatChoice(j, body.logprobs, self.texts) for j in range(n)]
        model = body.model or self.model
        envelope = Envelope(f"chatcmpl-{calls[0].request_id}", int(time.time()), model, True)
        return await self._respond(request, body, calls, n, choices, envelope)

    async def _respond(
        self,
        request: Request,
        body: Any,
        calls: list[AdmittedCall],
        n: int,  # sequences per prompt
        choices: list[Any],
        envelope: Envelope,
    ) -> Response:
        merged = MergedDeltas(self.admitter, calls)
        usages: list[Usage] = []

        def choice_of(index: int, delta: RequestDelta) -> Any:
            if delta.finished and delta.usage is not None:
                usages.append(delta.usage)
            return choices[index * n + delta.index]

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            def render(index: int, delta: RequestDelta) -> Iterable[dict]:
                piece = choice_of(index, delta).take(delta)
                yield envelope.chunk([piece], include_usage)

            opening = [
                envelope.chunk([c.opening()], include_usage) for c in choices if envelope.chat
            ]
            closing = (lambda: [envelope.usage_chunk(usages)]) if include_usage else (lambda: [])
            events = sse_body(merged, render, opening, closing)
            # The body's own cleanup releases the calls; a client gone before the body starts
            # leaves that to the task that runs once the response is done, however it ended.
            return StreamingResponse(
                events,
                media_type="text/event-stream",
                headers=SSE_HEADERS,
                background=BackgroundTask(merged.close),
            )

        async def collect() -> dict:
            async for index, delta in merged:
                choice_of(index, delta).take(delta)
            return envelope.whole([c.whole() for c in choices], usages)

        try:
            return JSONResponse(await unless_disconnected(request, collect()))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it: the requests were aborted
        finally:
            merged.close()

    # ---- admission ---------------------------------------------------------------------

    def _tenant(self, request: Request) -> Tenant:
        try:
            return self.authenticator.authenticate(request.headers)
        except AuthError as exc:
            raise Refused(exc.code, exc.message) from exc

    async def _body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        declared = request.headers.get("content-length")
        too_large = HttpError(
            413,
            f"the request body is larger than the server's limit ({limit} bytes)",
            "invalid_request_error",
            code="request_too_large",
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model and model not in self.engine.loras.names():
            raise self._no_such_model(model)

    def _no_such_model(self, model: str) -> HttpError:
        return HttpError(
            404,
            f"the model {model!r} does not exist; this server serves {self.model!r} and the "
            "LoRA adapters /v1/models lists",
            "not_found_error",
            param="model",
            code="model_not_found",
        )

    def _admit_all(
        self,
        tenant: Tenant,
        inputs: EngineInputs,
        priority: int | None,
        model: str | None,
        deadline_ms: int | None,
    ) -> list[AdmittedCall]:
        """`model` is the base model's name or a LoRA adapter's (as vLLM takes it)."""
        self._check_call_size(len(inputs.prompts), inputs.params.n)
        lora = None if model is None or model == self.model else model
        try:
            return self.admitter.admit_all(
                tenant,
                inputs.prompts,
                inputs.params,
                None,
                priority,
                lora=lora,
                deadline_ms=deadline_ms,
            )
        except Refused as refused:
            if refused.status == "NOT_FOUND" and lora is not None:
                raise self._no_such_model(lora) from refused
            refused.param = inputs.param_names.get(refused.param or "", refused.param)
            raise

    def _check_call_size(self, num_prompts: int, n: int) -> None:
        """A call with several prompts creates prompts x n engine sequences: at most
        max_prompts_per_request of them (one prompt's n is --max-n's to cap)."""
        limit = self.max_prompts_per_request
        if num_prompts == 1 or num_prompts * n <= limit:
            return
        times_n = f" x n ({n}) = {num_prompts * n} sequences" if n > 1 else ""
        raise Refused(
            "INVALID_ARGUMENT",
            f"{num_prompts} prompts{times_n} is over this server's max_prompts_per_request "
            f"({limit}); send them in several calls",
            param="prompt",
            limit="max_prompts_per_request",
        )

    def _echo_text(self, prompt: str | list[int]) -> str:
        return prompt if isinstance(prompt, str) else self.engine.tokenizer.decode(prompt)
