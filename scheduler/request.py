"""Requests as the scheduler tracks them, and the prompt checks that need the model.

What a caller may ask for is declared, with its limits, in contract/sampling.py; what depends
on the model is checked here (`validate_prompt`: the vocabulary) and in
`Scheduler.check_fits` (model length, cache size), so the engine and every frontend refuse
the same things with the same messages.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from contract.sampling import InvalidFieldError, SamplingParams
from contract.step import LoraRef
from scheduler.tenant_usage import TenantUsage

if TYPE_CHECKING:
    from scheduler.grammars import CompiledGrammar


def validate_prompt(prompt_token_ids: list[int], params: SamplingParams, vocab_size: int) -> None:
    """The checks that need the model's vocabulary (the length and the cache are the
    scheduler's: `Scheduler.check_fits`)."""
    if not prompt_token_ids:
        raise InvalidFieldError("prompt", "prompt must hold at least 1 token, got an empty prompt")
    for token_id in prompt_token_ids:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise InvalidFieldError(
                "prompt", f"prompt token ids must be integers, got {token_id!r}"
            )
        if not 0 <= token_id < vocab_size:
            raise InvalidFieldError(
                "prompt", f"prompt token ids must be in [0, {vocab_size}), got {token_id}"
            )
    for name, token_ids in (
        ("stop_token_ids", params.stop_token_ids),
        ("logit_bias keys", params.logit_bias),
    ):
        for token_id in token_ids:
            if token_id >= vocab_size:
                raise InvalidFieldError(
                    name.split()[0], f"{name} must be in [0, {vocab_size}), got {token_id}"
                )


class RequestStatus(enum.IntEnum):
    """Ordered so that `status > RUNNING` means finished."""

    WAITING = 0
    PREEMPTED = 1  # waiting again, its blocks given up; resumes by recompute
    RUNNING = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5
    FINISHED_ERROR = 6
    FINISHED_DEADLINE = 7  # ended because it could not finish by its deadline

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
    RequestStatus.FINISHED_DEADLINE: "deadline",
}

# Why a running request gave up its place (scheduler/preemption.py): its next tokens needed a
# block and none was free; a waiting request of a tenant further behind its fair share; a
# waiting request of higher priority.
PREEMPTION_CAUSES = ("blocks", "share", "priority")


@dataclass(slots=True, eq=False)
class Request:
    """One request's scheduling state. Identity, not value, makes two requests equal."""

    req_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    eos_ids: Iterable[int]  # the model's end-of-sequence ids
    tenant: str = "default"
    priority: int = 0  # lower is more important (the vLLM convention)
    arrival_time: float = 0.0
    arrival_seq: int = 0  # admission order, the tie-breaker the queue policies use
    status: RequestStatus = RequestStatus.WAITING
    # Prompt then output; len(all_token_ids) is the request's num_tokens.
    all_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose K/V are in the cache
    block_ids: list[int] = field(default_factory=list)  # logical block i -> physical block id
    block_hashes: list[bytes] = field(default_factory=list)  # of the full blocks, in order
    num_cached_blocks: int = 0  # leading blocks registered in the prefix cache
    num_cached_prompt_tokens: int = -1  # prefix-cache hit at first admission; -1 before it
    # What the worker has seen, so each step sends only the difference.
    on_worker: bool = False
    num_sent_tokens: int = 0
    num_sent_blocks: int = 0
    num_preemptions: int = 0
    preemptions: dict[str, int] = field(default_factory=dict)  # by cause (PREEMPTION_CAUSES)
    # Output tokens when it was last admitted: the quantum a request runs before a waiting one
    # may preempt it for share or priority counts from here.
    num_output_tokens_at_admission: int = 0
    # time.monotonic() by which it must finish (scheduler/deadlines.py), or None.
    deadline: float | None = None
    # Speculative decoding: tokens proposed for it and, of those, accepted by the model.
    num_spec_proposed: int = 0
    num_spec_accepted: int = 0
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Echo: one entry per prompt position, None until computed (position 0 stays None).
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    error: str | None = None
    # With FINISHED_ERROR: the worker could not be reached, so a retry may succeed
    # (UNAVAILABLE), rather than a failure of this request (INTERNAL).
    unavailable: bool = False
    lora: LoraRef | None = None  # the LoRA adapter it runs with; None: the base model
    # Shared by the tenant's requests once the scheduler takes the request.
    tenant_usage: TenantUsage = field(default_factory=TenantUsage)
    # Structured output: the compiled constraint (params.structured), and this sequence's
    # own matcher over it, advanced by each token kept (scheduler/token_masks.py).
    grammar: CompiledGrammar | None = None
    matcher: Any = field(init=False, default=None)
    # What the worker samples with: params with their floats in float32 (derived once).
    sampling: SamplingParams = field(init=False)
    # Generating one of these ends the request: the stop token ids, and EOS unless ignored.
    end_ids: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        self.eos_ids = frozenset(self.eos_ids)
        self.sampling = self.params.as_sampled()
        self.end_ids = self.params.end_ids(self.eos_ids)
        if self.grammar is not None:
            self.matcher = self.grammar.new_matcher()
        if self.params.echo:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)
            if self.params.top_logprobs:
                self.prompt_top_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def held_end_ids(self) -> tuple[int, ...]:
        """The end ids the worker must not sample before min_tokens (none without it)."""
        return tuple(sorted(self.end_ids)) if self.params.min_tokens else ()

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.RUNNING

    def finish(self, status: RequestStatus, error: str | None = None) -> None:
        """The one transition into a finished status (scheduler/stop.py says who calls it)."""
        assert status > RequestStatus.RUNNING, status
        self.status = status
        self.error = error

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason
