"""asyncio client for loom.v1.Generation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from client.channel import channel_credentials, open_channel
from client.request import build_chat_request, build_request, call_metadata
from loompb import serving_pb2, serving_pb2_grpc


class AsyncClient:
    """The asyncio twin of `Client`; create it inside a running event loop.

    async with AsyncClient("127.0.0.1:50051") as client:
        async for delta in client.generate_stream("Once upon a time", max_tokens=32):
            print(delta.text, end="")
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        tenant: str | None = None,
        timeout: float | None = None,
        options: Sequence[tuple[str, Any]] = (),
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = call_metadata(api_key, tenant)
        credentials = channel_credentials(tls_ca, tls_cert, tls_key, tls)
        self._channel = open_channel(target, credentials, options, aio=True)
        self._stub = serving_pb2_grpc.GenerationStub(self._channel)

    async def generate(
        self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling: Any
    ) -> serving_pb2.GenerateResponse:
        return await self._stub.Generate(
            build_request(prompt, **sampling),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )

    async def generate_stream(
        self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling: Any
    ) -> AsyncIterator[serving_pb2.GenerateResponse]:
        """Deltas as they are generated. Leaving the loop early (or cancelling the task)
        cancels the request on the server."""
        call = self._stub.GenerateStream(
            build_request(prompt, **sampling),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        try:
            async for delta in call:
                yield delta
        finally:
            call.cancel()

    async def abort(self, request_ids: str | Sequence[str]) -> list[str]:
        """Abort this tenant's live requests by id (a finished one, an unknown one or another
        tenant's is left alone); returns the ids that were aborted. Their streams end with
        FINISH_REASON_ABORT."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        reply = await self._stub.Abort(
            serving_pb2.AbortRequest(request_ids=ids), timeout=self.timeout, metadata=self._metadata
        )
        return list(reply.aborted_request_ids)

    async def model_info(self) -> serving_pb2.ModelInfo:
        return await self._stub.GetModelInfo(
            serving_pb2.GetModelInfoRequest(), timeout=self.timeout, metadata=self._metadata
        )

    async def load(self) -> serving_pb2.Load:
        """How busy the server is: requests running and waiting, KV blocks, prefix-cache hits."""
        return await self._stub.GetLoad(
            serving_pb2.GetLoadRequest(), timeout=self.timeout, metadata=self._metadata
        )

    async def tokenize(self, text: str, *, add_bos: bool = False) -> serving_pb2.TokenizeResponse:
        return await self._stub.Tokenize(
            serving_pb2.TokenizeRequest(text=text, add_bos=add_bos),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    async def detokenize(self, token_ids: Sequence[int]) -> serving_pb2.DetokenizeResponse:
        return await self._stub.Detokenize(
            serving_pb2.DetokenizeRequest(token_ids=list(token_ids)),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    async def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> serving_pb2.ApplyChatTemplateResponse:
        return await self._stub.ApplyChatTemplate(
            build_chat_request(messages, add_generation_prompt),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    async def chat(
        self, messages: Sequence[Mapping[str, str]], **sampling: Any
    ) -> serving_pb2.GenerateResponse:
        prompt = await self.apply_chat_template(messages)
        return await self.generate(list(prompt.prompt_token_ids), **sampling)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
