"""What the engine hands back: streamed per-request deltas and finished outputs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0  # prompt tokens served from the prefix cache
    # Speculative decoding: tokens proposed for this sequence, and of those accepted.
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0


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
    # "stop" | "length" | "abort" | "error" on the sequence's last delta
    finish_reason: str | None = None
    error: str | None = None  # set with finish_reason "error": what went wrong
    # With "error": the worker could not be reached; a retry may succeed (gRPC UNAVAILABLE).
    unavailable: bool = False
    usage: Usage | None = None  # on the request's last delta
    index: int = 0  # which of the request's n sequences this is about
    # Set with finish_reason while other sequences of the request still run.
    others_running: bool = False
    # On the last delta: how often the request was preempted, by cause (the log line's).
    preemptions: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        """The whole request is done (every one of its sequences)."""
        return self.finish_reason is not None and not self.others_running


@dataclass(slots=True)
class SequenceOutput:
    """One of the n sequences of a request."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: str


@dataclass(slots=True)
class RequestOutput:
    """A finished request, as the offline API returns it. The top-level text, tokens, logprobs
    and finish reason are sequence 0's; `sequences` holds all n (n >= 1) in index order."""

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
    sequences: list[SequenceOutput] = field(default_factory=list)


class RequestOutputBuilder:
    """Concatenates one request's deltas (of all its sequences) into its RequestOutput."""

    def __init__(self, req_id: str, prompt_token_ids: list[int]) -> None:
        self.req_id = req_id
        self.prompt_token_ids = list(prompt_token_ids)
        self._sequences: dict[int, SequenceOutput] = {}
        self._texts: dict[int, list[str]] = {}
        self._usage: Usage | None = None
        self._error: str | None = None
        self._prompt_logprobs: list[float | None] | None = None
        self._prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None

    @property
    def finished(self) -> bool:
        return self._usage is not None

    def add(self, delta: RequestDelta) -> None:
        seq = self._sequences.get(delta.index)
        if seq is None:
            seq = self._sequences[delta.index] = SequenceOutput(delta.index, "", [], [], [], "")
            self._texts[delta.index] = []
        self._texts[delta.index].append(delta.text)
        seq.token_ids.extend(delta.token_ids)
        seq.logprobs.extend(delta.logprobs)
        seq.top_logprobs.extend(delta.top_logprobs)
        if delta.prompt_logprobs is not None and self._prompt_logprobs is None:
            self._prompt_logprobs = delta.prompt_logprobs
            self._prompt_top_logprobs = delta.prompt_top_logprobs
        if delta.finish_reason is not None:
            seq.finish_reason = delta.finish_reason
            self._error = self._error or delta.error
        if delta.finished:
            self._usage = delta.usage or Usage()

    def build(self) -> RequestOutput:
        sequences = [self._sequences[i] for i in sorted(self._sequences)]
        for seq in sequences:
            seq.text = "".join(self._texts[seq.index])
        first = sequences[0] if sequences else SequenceOutput(0, "", [], [], [], "")
        return RequestOutput(
            req_id=self.req_id,
            prompt_token_ids=self.prompt_token_ids,
            text=first.text,
            token_ids=first.token_ids,
            logprobs=first.logprobs,
            top_logprobs=first.top_logprobs,
            finish_reason=first.finish_reason,
            usage=self._usage or Usage(),
            prompt_logprobs=self._prompt_logprobs,
            prompt_top_logprobs=self._prompt_top_logprobs,
            error=self._error,
            sequences=sequences,
        )
