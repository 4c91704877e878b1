"""Between the public protobuf messages (loom.v1) and the engine's Python types.

Validation of values lives where they are declared (contract/sampling.py; the prompt in
scheduler/request.py), so the offline engine and the server refuse the same things with the
same words; this module only adds what is particular to the public API's messages (which
input field is set) and builds the responses.
"""

from __future__ import annotations

from loompb import serving_pb2
from scheduler.outputs import RequestDelta
from serving.request_ids import check_request_id

FINISH_REASONS = {
    None: serving_pb2.FINISH_REASON_UNSPECIFIED,
    "stop": serving_pb2.FINISH_REASON_STOP,
    "length": serving_pb2.FINISH_REASON_LENGTH,
    "abort": serving_pb2.FINISH_REASON_ABORT,
    "error": serving_pb2.FINISH_REASON_ERROR,
}


def check_input_fields(request: serving_pb2.GenerateRequest) -> None:
    """Exactly one of prompt and prompt_token_ids; a request_id of visible ASCII
    (serving/request_ids.py), or none."""
    has_text = bool(request.prompt)
    has_ids = len(request.prompt_token_ids) > 0
    if has_text and has_ids:
        raise ValueError("set exactly one of prompt and prompt_token_ids, got both")
    if not has_text and not has_ids:
        raise ValueError("prompt must not be empty: set prompt or prompt_token_ids")
    check_request_id(request.request_id)


def _top(entries: list[tuple[int, float]] | None) -> serving_pb2.TopLogprobs:
    entries = entries or []
    return serving_pb2.TopLogprobs(
        token_ids=[token_id for token_id, _ in entries],
        logprobs=[logprob for _, logprob in entries],
    )


def add_delta(response: serving_pb2.GenerateResponse, delta: RequestDelta) -> None:
    """Append one engine delta to a response: a stream sends one response per delta; the
    unary call adds every delta to the same response."""
    response.index = delta.index
    response.text += delta.text
    response.token_ids.extend(delta.token_ids)
    response.logprobs.extend(delta.logprobs)
    response.top_logprobs.extend(_top(entries) for entries in delta.top_logprobs)
    if delta.prompt_token_ids is not None:
        response.prompt_token_ids.extend(delta.prompt_token_ids)
    if delta.prompt_logprobs is not None:
        # The engine aligns these with the prompt (position 0 is None: no context); the API
        # sends one entry fewer, starting at position 1.
        response.prompt_logprobs.extend(lp for lp in delta.prompt_logprobs[1:] if lp is not None)
    if delta.prompt_top_logprobs is not None:
        response.prompt_top_logprobs.extend(_top(t) for t in delta.prompt_top_logprobs[1:])
    if delta.finish_reason is not None:
        response.finish_reason = FINISH_REASONS[delta.finish_reason]
    if delta.usage is not None:
        response.usage.prompt_tokens = delta.usage.prompt_tokens
        response.usage.completion_tokens = delta.usage.completion_tokens
        response.usage.cached_prompt_tokens = delta.usage.cached_prompt_tokens
        response.usage.spec_proposed_tokens = delta.usage.spec_proposed_tokens
        response.usage.spec_accepted_tokens = delta.usage.spec_accepted_tokens


class UnaryResponse:
    """Generate's one response from every delta of a request: sequence 0's text, tokens and
    logprobs at the top, and with n > 1 each sequence in `sequences`, by index."""

    def __init__(self, request_id: str, n: int) -> None:
        self._request_id = request_id
        self._n = n
        self._by_index: dict[int, serving_pb2.GenerateResponse] = {}

    def add(self, delta: RequestDelta) -> None:
        response = self._by_index.get(delta.index)
        if response is None:
            response = self._by_index[delta.index] = serving_pb2.GenerateResponse(
                request_id=self._request_id
            )
        add_delta(response, delta)

    def response(self) -> serving_pb2.GenerateResponse:
        first = self._by_index.get(0) or serving_pb2.GenerateResponse(request_id=self._request_id)
        first.index = 0
        if self._n == 1:
            return first
        for index in sorted(self._by_index):
            part = self._by_index[index]
            if part.prompt_token_ids and not first.prompt_token_ids:
                first.prompt_token_ids.extend(part.prompt_token_ids)
                first.prompt_logprobs.extend(part.prompt_logprobs)
                first.prompt_top_logprobs.extend(part.prompt_top_logprobs)
            if part.HasField("usage"):
                first.usage.CopyFrom(part.usage)
            first.sequences.append(
                serving_pb2.Sequence(
                    index=index,
                    text=part.text,
                    token_ids=part.token_ids,
                    logprobs=part.logprobs,
                    top_logprobs=part.top_logprobs,
                    finish_reason=part.finish_reason,
                )
            )
        return first
