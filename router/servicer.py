"""loom.v1.Generation at the router: the engines' API, answered by forwarding to them.

Auth happens here first, with the router's own keys or tenants file (serving/auth.py): a
wrong key never reaches a backend. The caller's key travels on, with the tenant it names, so
each engine runs the request as the same tenant (give the engines the same tenants file, or
none). A tenants file's quotas are applied here, for all the backends together
(serving/quotas.py), before any backend is asked. Generation calls go where the routing
policy says (router/relay.py); Abort goes to the backend that has the request; the other calls
to any serving backend.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from loompb import serving_pb2, serving_pb2_grpc
from router.backend import Backend
from router.backend_pool import BackendPool
from router.metrics import RouterMetrics
from router.policy import PromptBlocks
from router.relay import Caller, Generation, Relay
from serving.auth import TENANT_HEADER, Authenticator, AuthError
from serving.quotas import RETRY_AFTER_KEY, UNLIMITED, Admission, QuotaExceeded, Quotas
from serving.request_ids import check_abort_ids, check_request_id

DEFAULT_MAX_TOKENS = 16  # SamplingParams.max_tokens when unset, as the API documents it


class RouterServicer(serving_pb2_grpc.GenerationServicer):
    def __init__(
        self,
        pool: BackendPool,
        relay: Relay,
        authenticator: Authenticator,
        metrics: RouterMetrics,
        max_request_bytes: int,
        use_prefix: bool,
    ) -> None:
        self.pool = pool
        self.relay = relay
        self.authenticator = authenticator
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.use_prefix = use_prefix
        self.draining = False
        self.num_in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.quotas = Quotas()
        # (scope, request_id) -> each live generation call (Abort finds its backend there).
        self.live: dict[tuple[str, str], Generation] = {}
        self._turn = 0

    # ---- generation --------------------------------------------------------------------

    async def Generate(self, request: serving_pb2.GenerateRequest, context: Any) -> Any:
        return await self._generate(request, context, streaming=False)

    async def GenerateStream(self, request: serving_pb2.GenerateRequest, context: Any) -> Any:
        await self._generate(request, context, streaming=True)

    async def _generate(
        self, request: serving_pb2.GenerateRequest, context: Any, streaming: bool
    ) -> serving_pb2.GenerateResponse | None:
        arrived = time.perf_counter()
        caller = await self._caller(context)
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the router is shutting down")
        try:
            check_request_id(request.request_id)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        forwarded = serving_pb2.GenerateRequest()
        forwarded.CopyFrom(request)
        # The router names every request, so that Abort can find the backend holding it.
        forwarded.request_id = request.request_id or uuid.uuid4().hex
        key = (caller.scope, forwarded.request_id)
        if key in self.live:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS,
                f"request_id {forwarded.request_id!r} is already in use by a live request",
            )
        gen = self.live[key] = Generation(forwarded, caller, streaming, arrived)
        self._enter()
        try:
            prompt_ids = await self._prompt_ids(request, caller, context)
            if prompt_ids is not None and self.use_prefix and not request.sampling.echo:
                gen.prompt = PromptBlocks(caller.scope, prompt_ids)  # echo skips the cache
            gen.admission = await self._admit(request, caller, prompt_ids, context)
            return await self.relay.generate(gen, context)
        finally:
            gen.admission.release()
            del self.live[key]
            self._leave()

    async def _prompt_ids(
        self, request: serving_pb2.GenerateRequest, caller: Caller, context: Any
    ) -> list[int] | None:
        """The prompt's token ids, where routing or quotas need them; None when neither
        does, or the request is malformed (the backend will say how)."""
        if not self.use_prefix and not caller.tenant.has_quotas:
            return None
        if request.prompt_token_ids and not request.prompt:
            return list(request.prompt_token_ids)
        if not request.prompt or request.prompt_token_ids:
            return None
        tokenize = serving_pb2.TokenizeRequest(text=request.prompt, add_bos=True)
        try:
            reply = await self._call_any("Tokenize", tokenize, context, caller)
        except grpc.aio.AioRpcError:
            return None  # routed by load; the backend answers what is wrong, if anything
        return list(reply.token_ids)

    async def _admit(
        self,
        request: serving_pb2.GenerateRequest,
        caller: Caller,
        prompt_ids: list[int] | None,
        context: Any,
    ) -> Admission:
        """The caller's tenant quotas, for all the backends together, before any is asked."""
        if not caller.tenant.has_quotas or prompt_ids is None:
            return UNLIMITED
        sampling = request.sampling
        max_tokens = sampling.max_tokens if sampling.HasField("max_tokens") else DEFAULT_MAX_TOKENS
        n = sampling.n if sampling.HasField("n") else 1
        max_n = max((b.info.max_n for b in self.pool.serving() if b.info is not None), default=1)
        if not 1 <= n <= max_n:
            return UNLIMITED  # the backend refuses it, INVALID_ARGUMENT naming n
        try:
            return self.quotas.admit(caller.tenant, len(prompt_ids), max_tokens, n)
        except QuotaExceeded as exc:
            trailers = ()
            if exc.retry_after_ms is not None:
                trailers = ((RETRY_AFTER_KEY, str(exc.retry_after_ms)),)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, exc.message, trailing_metadata=trailers
            )
            raise AssertionError("unreachable: context.abort raises") from exc

    def _enter(self) -> None:
        self.num_in_flight += 1
        self.idle.clear()

    def _leave(self) -> None:
        self.num_in_flight -= 1
        if self.num_in_flight == 0:
            self.idle.set()

    # ---- who is calling ----------------------------------------------------------------

    async def _caller(self, context: Any) -> Caller:
        metadata = context.invocation_metadata() or ()
        try:
            tenant = self.authenticator.authenticate(metadata)
        except AuthError as exc:
            await context.abort(grpc.StatusCode[exc.code], exc.message)
            raise AssertionError("unreachable: context.abort raises") from exc
        found = {key.lower(): value for key, value in metadata if isinstance(value, str)}
        authorization = found.get("authorization")
        forward = [("authorization", authorization)] if authorization else []
        if self.authenticator.enabled:
            scope = tenant.name
            forward.append((TENANT_HEADER, tenant.name))
        else:
            # The backends may check keys the router does not: keep keys apart by their hash.
            scope = tenant.name
            if authorization:
                digest = hashlib.sha256(authorization.encode()).hexdigest()[:32]
                scope = f"{tenant.name}/key-{digest}"
            if TENANT_HEADER in found:
                forward.append((TENANT_HEADER, found[TENANT_HEADER]))
        return Caller(tenant, scope, tuple(forward))

    # ---- everything else ---------------------------------------------------------------

    async def Abort(self, request: serving_pb2.AbortRequest, context: Any) -> Any:
        caller = await self._caller(context)
        try:
            check_abort_ids(list(request.request_ids))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        request_ids = list(dict.fromkeys(request.request_ids))  # once each, in order
        by_backend: dict[Backend | None, list[str]] = {}
        for request_id in request_ids:
            gen = self.live.get((caller.scope, request_id))
            backend = gen.backend if gen is not None else None
            by_backend.setdefault(backend, []).append(request_id)
        # Ids the router is not relaying go to one backend, which aborts any the caller sent
        # it directly.
        unknown = by_backend.pop(None, [])
        serving = self.pool.serving()
        if unknown and serving:
            by_backend.setdefault(self._next(serving), []).extend(unknown)

        async def abort_on(backend: Backend, ids: list[str]) -> list[str]:
            reply = await backend.stub.Abort(
                serving_pb2.AbortRequest(request_ids=ids),
                timeout=context.time_remaining(),
                metadata=caller.metadata,
            )
            return list(reply.aborted_request_ids)

        results = await asyncio.gather(
            *(abort_on(b, ids) for b, ids in by_backend.items()), return_exceptions=True
        )
        aborted: set[str] = set()
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                if result.code() != grpc.StatusCode.UNAVAILABLE:  # gone: its calls end anyway
                    await context.abort(result.code(), result.details() or "")
            elif isinstance(result, BaseException):
                raise result
            else:
                aborted.update(result)
        return serving_pb2.AbortResponse(
            aborted_request_ids=[i for i in request_ids if i in aborted]
        )

    async def GetModelInfo(self, request: Any, context: Any) -> Any:
        caller = await self._caller(context)
        info = await self._relay_any("GetModelInfo", request, context, caller)
        info.max_request_bytes = min(info.max_request_bytes, self.max_request_bytes)
        return info

    async def Tokenize(self, request: serving_pb2.TokenizeRequest, context: Any) -> Any:
        return await self._relay_any("Tokenize", request, context, await self._caller(context))

    async def Detokenize(self, request: serving_pb2.DetokenizeRequest, context: Any) -> Any:
        return await self._relay_any("Detokenize", request, context, await self._caller(context))

    async def GetLoad(self, request: serving_pb2.GetLoadRequest, context: Any) -> Any:
        """The sum over the backends that answer, as if they were one engine."""
        await self._caller(context)
        answering = self.pool.answering()
        if not answering:  # as an engine whose loop has stopped answers
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.relay.none_serving())
        total = serving_pb2.Load(draining=self.draining)
        for backend in answering:
            load = backend.load
            assert load is not None
            total.num_requests_running += load.num_requests_running
            total.num_requests_waiting += load.num_requests_waiting
            total.num_kv_blocks_used += load.num_kv_blocks_used
            total.num_kv_blocks += load.num_kv_blocks
            total.prefix_cache_queries += load.prefix_cache_queries
            total.prefix_cache_hits += load.prefix_cache_hits
        if total.prefix_cache_queries:
            total.prefix_cache_hit_rate = total.prefix_cache_hits / total.prefix_cache_queries
        return total

    async def _relay_any(self, method: str, request: Any, context: Any, caller: Caller) -> Any:
        """A call any backend can answer; its error status is passed back as it is."""
        try:
            return await self._call_any(method, request, context, caller)
        except grpc.aio.AioRpcError as err:
            await context.abort(err.code(), err.details() or "")

    async def _call_any(self, method: str, request: Any, context: Any, caller: Caller) -> Any:
        """One serving backend's answer, another's if it is UNAVAILABLE; raises AioRpcError."""
        serving = self.pool.serving()
        if not serving:
            await context.abort(grpc.StatusCode.UNAVAILABLE, self.relay.none_serving())
        first = self._next(serving)
        attempts = ([first] + [b for b in serving if b is not first])[: 1 + self.relay.retries]
        for attempt, backend in enumerate(attempts):
            self.metrics.requests.labels(backend.address, method).inc()
            call: Callable[..., Awaitable[Any]] = getattr(backend.stub, method)
            try:
                return await call(
                    request, timeout=context.time_remaining(), metadata=caller.metadata
                )
            except grpc.aio.AioRpcError as err:
                self.metrics.errors.labels(backend.address, method, err.code().name).inc()
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == len(attempts):
                    raise
                self.pool.suspect(backend, err.details() or "UNAVAILABLE")
        raise AssertionError("unreachable")

    def _next(self, backends: list[Backend]) -> Backend:
        self._turn += 1
        return backends[self._turn % len(backends)]
