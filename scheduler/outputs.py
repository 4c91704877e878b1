"""What the engine hands back: streamed per-request deltas and finished outputs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache


@dataclass(slots=True)
class RequestDelta:
    """What one request gained in one engine step; the deltas of a request concatenate to
    its RequestOutput."""

    req_id: str
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # when SamplingParams.logprobs
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Echo only, on the first delta that carries output (complete, aligned with the prompt).
    prompt_token_ids: list[int] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error" on the last delta
    error: str | None = None  # set with finish_reason "error": what went wrong
    # With "error": the worker could not be reached; a retry may succeed (gRPC UNAVAILABLE).
    unavailable: bool = False
    usage: Usage | None = None  # on the last delta

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    """A finished request, as the offline API returns it."""

    req_id: str
    prompt_token_ids: list[int]
    text: str
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: str
    usage: Usage
    # With echo: aligned with prompt_token_ids, the first entry None (no context before it).
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    error: str | None = None


class RequestOutputBuilder:
    """Concatenates one request's deltas into its RequestOutput."""

    def __init__(self, req_id: str, prompt_token_ids: list[int]) -> None:
        self._output = RequestOutput(
            req_id=req_id,
            prompt_token_ids=list(prompt_token_ids),
            text="",
            token_ids=[],
            logprobs=[],
            top_logprobs=[],
            finish_reason="",
            usage=Usage(),
        )
        self._texts: list[str] = []

    @property
    def finished(self) -> bool:
        return bool(self._output.finish_reason)

    def add(self, delta: RequestDelta) -> None:
        out = self._output
        self._texts.append(delta.text)
        out.token_ids.extend(delta.token_ids)
        out.logprobs.extend(delta.logprobs)
        out.top_logprobs.extend(delta.top_logprobs)
        if delta.prompt_logprobs is not None:
            out.prompt_logprobs = delta.prompt_logprobs
            out.prompt_top_logprobs = delta.prompt_top_logprobs
        if delta.finish_reason is not None:
            out.finish_reason = delta.finish_reason
            out.error = delta.error
            out.usage = delta.usage or Usage()

    def build(self) -> RequestOutput:
        self._output.text = "".join(self._texts)
        return self._output
