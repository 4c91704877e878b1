"""Blocking client for loom.v1.Generation."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from client.channel import channel_credentials, open_channel
from client.request import build_chat_request, build_request, call_metadata
from loompb import serving_pb2, serving_pb2_grpc


class Client:
    """A connection to a Loom server.

        with Client("127.0.0.1:50051") as client:
            reply = client.generate("Once upon a time", max_tokens=32, temperature=0)
            print(reply.text)

    Sampling keyword arguments are those of `client.request.build_request`. Errors surface
    as `grpc.RpcError` with the server's status code and message. TLS: `tls_ca` (PEM file) to
    trust a private CA, or `tls=True` for the system's; `tls_cert` and `tls_key` for a server
    that requires client certificates (`client.channel.channel_credentials`).
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
        self.timeout = timeout  # default per-call deadline in seconds; None waits forever
        self._metadata = call_metadata(api_key, tenant)
        credentials = channel_credentials(tls_ca, tls_cert, tls_key, tls)
        self._channel = open_channel(target, credentials, options, aio=False)
        self._stub = serving_pb2_grpc.GenerationStub(self._channel)

    def generate(
        self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling: Any
    ) -> serving_pb2.GenerateResponse:
        """The finished sequence: text, token ids, logprobs when asked, finish reason, usage."""
        return self._stub.Generate(
            build_request(prompt, **sampling),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )

    def generate_stream(
        self, prompt: str | Sequence[int], *, timeout: float | None = None, **sampling: Any
    ) -> Iterator[serving_pb2.GenerateResponse]:
        """Deltas as they are generated; the last one carries finish_reason and usage.
        Leaving the loop early cancels the request on the server."""
        call = self._stub.GenerateStream(
            build_request(prompt, **sampling),
            timeout=self.timeout if timeout is None else timeout,
            metadata=self._metadata,
        )
        try:
            yield from call
        finally:
            call.cancel()  # no-op when the stream already ended

    def abort(self, request_ids: str | Sequence[str]) -> list[str]:
        """Abort this tenant's live requests by id (a finished one, an unknown one or another
        tenant's is left alone); returns the ids that were aborted. Their streams end with
        FINISH_REASON_ABORT."""
        ids = [request_ids] if isinstance(request_ids, str) else list(request_ids)
        reply = self._stub.Abort(
            serving_pb2.AbortRequest(request_ids=ids), timeout=self.timeout, metadata=self._metadata
        )
        return list(reply.aborted_request_ids)

    def model_info(self) -> serving_pb2.ModelInfo:
        return self._stub.GetModelInfo(
            serving_pb2.GetModelInfoRequest(), timeout=self.timeout, metadata=self._metadata
        )

    def load(self) -> serving_pb2.Load:
        """How busy the server is: requests running and waiting, KV blocks, prefix-cache hits."""
        return self._stub.GetLoad(
            serving_pb2.GetLoadRequest(), timeout=self.timeout, metadata=self._metadata
        )

    def tokenize(self, text: str, *, add_bos: bool = False) -> serving_pb2.TokenizeResponse:
        return self._stub.Tokenize(
            serving_pb2.TokenizeRequest(text=text, add_bos=add_bos),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    def detokenize(self, token_ids: Sequence[int]) -> serving_pb2.DetokenizeResponse:
        return self._stub.Detokenize(
            serving_pb2.DetokenizeRequest(token_ids=list(token_ids)),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> serving_pb2.ApplyChatTemplateResponse:
        """The prompt the model's chat template makes of `messages`, and its token ids."""
        return self._stub.ApplyChatTemplate(
            build_chat_request(messages, add_generation_prompt),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    def chat(
        self, messages: Sequence[Mapping[str, str]], **sampling: Any
    ) -> serving_pb2.GenerateResponse:
        """The assistant's reply to `messages`: the chat template applied on the server, then
        Generate on the ids (the reply ends at the model's end of turn)."""
        prompt = self.apply_chat_template(messages)
        return self.generate(list(prompt.prompt_token_ids), **sampling)

    def chat_stream(
        self, messages: Sequence[Mapping[str, str]], **sampling: Any
    ) -> Iterator[serving_pb2.GenerateResponse]:
        prompt = self.apply_chat_template(messages)
        yield from self.generate_stream(list(prompt.prompt_token_ids), **sampling)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
