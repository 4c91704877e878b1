"""Requests as the scheduler tracks them, and the sampling parameters users send.

The checks of user input live here (`SamplingParams.__post_init__` for the parameters on
their own, `validate_prompt` for what depends on the vocabulary) and in
`Scheduler.check_fits` (model length, cache size), so the engine and every frontend refuse
the same things with the same messages.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from contract.step import SamplingOptions
from scheduler.errors import InvalidFieldError
from scheduler.tenant_usage import TenantUsage

# Request limits, checked before any work is queued (the gRPC ModelInfo reports them).
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_LENGTH = 256
MAX_SEED = 2**63 - 1
MAX_PENALTY = 2.0  # presence and frequency penalties lie in [-2, 2], as OpenAI's do
MAX_LOGIT_BIAS = 100.0  # a bias lies in [-100, 100]
MAX_LOGIT_BIAS_ENTRIES = 300


@dataclass(slots=True)
class SamplingParams:
    """How to generate, with the defaults users of OpenAI's and vLLM's APIs expect.

    Logprobs are those of the model's own distribution (float32 log-softmax of the raw
    logits), not of the temperature/top-k/top-p-shaped one used to draw the token.
    """

    max_tokens: int = 16  # most tokens to generate, >= 1; prompt + max_tokens <= model length
    temperature: float = 1.0  # 0 picks the most likely token (greedy)
    top_p: float = 1.0  # nucleus mass in (0, 1]; 1 keeps every token
    top_k: int = 0  # 0 keeps every token
    seed: int | None = None  # None: the worker's own generator; else draws depend on (seed, pos)
    # Stop when the generated text contains one of these; the string and what follows it are
    # not returned.
    stop: list[str] = field(default_factory=list)
    # Stop when one of these ids is generated; the id and its text are returned.
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False  # keep going past EOS (benchmarks)
    # EOS, stop ids and stop strings do not end the request before this many tokens: the
    # worker never samples EOS or the stop ids until then.
    min_tokens: int = 0
    logprobs: bool = False  # the logprob of each generated token
    top_logprobs: int = 0  # the k most likely tokens at each generated position, k <= 20
    echo: bool = False  # also the logprob of every prompt token (these skip the prefix cache)
    # Sequences to generate from the prompt, >= 1 (the engine caps it: max_n). They share the
    # prompt's KV blocks; with a seed, sequence i draws from (seed, i, position).
    n: int = 1
    # OpenAI's penalties over the generated tokens: each token's logit loses
    # frequency_penalty * its count + presence_penalty if it occurred; in [-2, 2].
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # CTRL's (Hugging Face's), over prompt and generated tokens: > 0, 1 is off; above 1 makes
    # a token already seen less likely.
    repetition_penalty: float = 1.0
    # Token id -> bias in [-100, 100] added to its logit; at most 300 entries.
    logit_bias: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, low=1)
        _check_int("top_k", self.top_k, low=0)
        _check_int("min_tokens", self.min_tokens, low=0)
        if self.min_tokens > self.max_tokens:
            raise InvalidFieldError(
                "min_tokens",
                f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}",
            )
        _check_int("top_logprobs", self.top_logprobs, low=0, high=MAX_TOP_LOGPROBS)
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=MAX_SEED)
        _check_float("temperature", self.temperature)
        if self.temperature < 0:
            raise InvalidFieldError(
                "temperature", f"temperature must be >= 0, got {self.temperature}"
            )
        _check_float("top_p", self.top_p)
        if not 0 < self.top_p <= 1:
            raise InvalidFieldError("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        # A lone string is a common slip; take it as one stop string.
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        self.stop_token_ids = list(self.stop_token_ids)
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidFieldError(
                "stop", f"stop may hold at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}"
            )
        for s in self.stop:
            if not isinstance(s, str) or not s:
                raise InvalidFieldError(
                    "stop", f"stop strings must be non-empty strings, got {s!r}"
                )
            if len(s) > MAX_STOP_STRING_LENGTH:
                raise InvalidFieldError(
                    "stop",
                    f"stop strings must be at most {MAX_STOP_STRING_LENGTH} characters, "
                    f"got {len(s)}",
                )
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids", token_id, low=0)
        _check_int("n", self.n, low=1)
        for name in ("presence_penalty", "frequency_penalty"):
            _check_float(name, getattr(self, name), -MAX_PENALTY, MAX_PENALTY)
        _check_float("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise InvalidFieldError(
                "repetition_penalty",
                f"repetition_penalty must be > 0, got {self.repetition_penalty}",
            )
        self.logit_bias = _checked_logit_bias(self.logit_bias)

    def end_ids(self, eos_ids: Iterable[int] = ()) -> frozenset[int]:
        """The ids that end the request: its stop token ids, and the model's EOS ids
        (several for Llama 3) unless ignore_eos."""
        eos = () if self.ignore_eos else eos_ids
        return frozenset(self.stop_token_ids).union(eos)

    def to_options(self, eos_ids: Iterable[int] = ()) -> SamplingOptions:
        """The subset the worker needs to sample; `eos_ids` are the model's EOS ids, which
        the worker holds back with the stop token ids until min_tokens are generated."""
        stop_ids = self.end_ids(eos_ids)
        return SamplingOptions(
            temperature=float(self.temperature),
            top_p=float(self.top_p),
            top_k=self.top_k,
            seed=self.seed,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
            echo=self.echo,
            min_tokens=self.min_tokens,
            stop_token_ids=tuple(sorted(stop_ids)) if self.min_tokens else (),
            presence_penalty=float(self.presence_penalty),
            frequency_penalty=float(self.frequency_penalty),
            repetition_penalty=float(self.repetition_penalty),
            logit_bias=tuple(sorted(self.logit_bias.items())),
        )


def _check_int(name: str, value: object, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFieldError(name, f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InvalidFieldError(name, f"{name} must be {limit}, got {value}")


def _check_float(
    name: str, value: object, low: float | None = None, high: float | None = None
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidFieldError(name, f"{name} must be a finite number, got {value!r}")
    if low is not None and high is not None and not low <= value <= high:
        raise InvalidFieldError(name, f"{name} must be in [{low:g}, {high:g}], got {value}")


def _checked_logit_bias(logit_bias: object) -> dict[int, float]:
    if not isinstance(logit_bias, dict):
        raise InvalidFieldError(
            "logit_bias", f"logit_bias must map token ids to biases, got {logit_bias!r}"
        )
    if len(logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidFieldError(
            "logit_bias",
            f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(logit_bias)}",
        )
    for token_id, bias in logit_bias.items():
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise InvalidFieldError(
                "logit_bias", f"logit_bias keys must be token ids >= 0, got {token_id!r}"
            )
        _check_float("logit_bias", bias, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
    return {token_id: float(bias) for token_id, bias in logit_bias.items()}


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

    @property
    def finish_reason(self) -> str | None:
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
    RequestStatus.FINISHED_ERROR: "error",
}


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
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    # Echo: one entry per prompt position, None until computed (position 0 stays None).
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[list[tuple[int, float]] | None] | None = None
    error: str | None = None
    # With FINISHED_ERROR: the worker could not be reached, so a retry may succeed
    # (UNAVAILABLE), rather than a failure of this request (INTERNAL).
    unavailable: bool = False
    # Shared by the tenant's requests once the scheduler takes the request.
    tenant_usage: TenantUsage = field(default_factory=TenantUsage)
    # Derived from params once, for the per-step path.
    options: SamplingOptions = field(init=False)
    # Generating one of these ends the request: the stop token ids, and EOS unless ignored.
    end_ids: frozenset[int] = field(init=False)

    def __post_init__(self) -> None:
        self.all_token_ids = list(self.prompt_token_ids)
        self.eos_ids = frozenset(self.eos_ids)
        self.options = self.params.to_options(self.eos_ids)
        self.end_ids = self.params.end_ids(self.eos_ids)
        if self.params.echo:
            self.prompt_logprobs = [None] * len(self.prompt_token_ids)
            if self.params.top_logprobs:
                self.prompt_top_logprobs = [None] * len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.status > RequestStatus.RUNNING

    @property
    def finish_reason(self) -> str | None:
        return self.status.finish_reason
