"""What each call of a soak does: unary or streamed, its tenant, prompt and sampling, and its
fate (run to the end, cancelled by the client, a deadline that may pass, a client that hangs
up), all drawn from one seeded generator so a seed replays the same run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loompb import serving_pb2

# Fates of a call, and the statuses each may end with besides OK (a cancel or a deadline
# that comes after the last token leaves the call OK).
COMPLETE, CANCEL, DEADLINE, DISCONNECT = "complete", "cancel", "deadline", "disconnect"
EXPECTED_STATUSES = {
    COMPLETE: {"OK"},
    CANCEL: {"OK", "CANCELLED"},
    DEADLINE: {"OK", "DEADLINE_EXCEEDED"},
    DISCONNECT: {"OK", "CANCELLED"},
}
# Refusals a soak against a server with a queue cap or tenant quotas sees by design.
SHED_STATUS = "RESOURCE_EXHAUSTED"
WORDS = (
    "once", "upon", "a", "time", "there", "was", "a", "little", "girl", "named", "lily", "she",
    "loved", "to", "play", "outside", "in", "the", "park", "one", "day", "saw", "big", "red",
    "ball", "and", "her", "mom", "said", "tom", "dog", "cat", "sun", "tree", "happy",
)  # fmt: skip
# A text prompt's tokens per word at most (SentencePiece pieces, BOS), to keep it in bounds.
TOKENS_PER_WORD = 4


@dataclass(slots=True, frozen=True)
class SoakOptions:
    streams: int = 300  # calls in the whole run, unary and streamed
    rounds: int = 1  # the calls split into rounds; the server must be idle after each
    duration: float = 60.0  # seconds: no call starts after this
    cancel_fraction: float = 0.2
    deadline_fraction: float = 0.1
    disconnect_fraction: float = 0.05
    unary_fraction: float = 0.3
    concurrency: int = 32  # calls in flight at most
    tenants: int = 3  # x-loom-tenant soak-0 .. soak-(N-1)
    max_tokens: int = 48
    cancel_max_delay: float = 0.2  # a unary call is cancelled uniform(0, this) s after sending
    call_timeout: float = 120.0  # a call not ended by then (no planned deadline) is lost
    idle_timeout: float = 30.0  # seconds for the server to be idle after a round
    seed: int = 0

    def check(self) -> None:
        """ValueError naming the option that is out of range."""
        for name in ("streams", "rounds", "concurrency", "tenants", "max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("duration", "call_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        fractions = ("cancel_fraction", "deadline_fraction", "disconnect_fraction")
        for name in (*fractions, "unary_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1]")
        if sum(getattr(self, name) for name in fractions) > 1.0:
            raise ValueError("--cancel-fraction + --deadline-fraction + --disconnect-fraction > 1")
        if self.cancel_max_delay < 0:
            raise ValueError("--cancel-max-delay must be >= 0")


@dataclass(slots=True)
class PlannedCall:
    index: int
    streamed: bool
    fate: str
    tenant: str
    request: serving_pb2.GenerateRequest
    timeout: float  # the call's gRPC deadline
    # Cancel and disconnect fates: a stream ends after this many messages (mid-stream), a
    # unary call this many seconds after it was sent.
    cancel_after_messages: int | None
    cancel_after: float | None


def plan_call(
    index: int,
    options: SoakOptions,
    vocab_size: int,
    max_model_len: int,
    rng: np.random.Generator,
) -> PlannedCall:
    draw = rng.random()
    fate = COMPLETE
    for name, share in (
        (CANCEL, options.cancel_fraction),
        (DEADLINE, options.deadline_fraction),
        (DISCONNECT, options.disconnect_fraction),
    ):
        if draw < share:
            fate = name
            break
        draw -= share
    streamed = fate == DISCONNECT or rng.random() >= options.unary_fraction
    timeout = options.call_timeout
    if fate == DEADLINE:
        timeout = float(rng.uniform(0.01, 0.25))  # often before the last token
    tenant = f"soak-{int(rng.integers(options.tenants))}"
    request = _request(options, vocab_size, max_model_len, rng)
    after_messages, after = None, None
    if fate in (CANCEL, DISCONNECT) and streamed:
        after_messages = int(rng.integers(1, max(1, request.sampling.max_tokens // 2) + 1))
    elif fate == CANCEL:
        after = float(rng.uniform(0.0, options.cancel_max_delay))
    return PlannedCall(index, streamed, fate, tenant, request, timeout, after_messages, after)


def _request(
    options: SoakOptions, vocab_size: int, max_model_len: int, rng: np.random.Generator
) -> serving_pb2.GenerateRequest:
    max_words = max(1, min(48, (max_model_len - options.max_tokens) // TOKENS_PER_WORD))
    num_words = int(rng.integers(1, max_words + 1))
    max_tokens = int(rng.integers(1, options.max_tokens + 1))
    sampling = serving_pb2.SamplingParams(max_tokens=max_tokens)
    style = rng.random()
    if style < 0.4:
        sampling.temperature = 0.0
    else:  # seeded draws with the filters in play
        sampling.temperature = float(rng.uniform(0.5, 1.2))
        sampling.seed = int(rng.integers(1 << 31))
        sampling.top_p = float(rng.uniform(0.5, 1.0))
        sampling.top_k = int(rng.integers(0, 50))
    if rng.random() < 0.3:
        sampling.logprobs = True
        sampling.top_logprobs = int(rng.integers(0, 6))
    if rng.random() < 0.5:
        sampling.ignore_eos = True
    if rng.random() < 0.2:
        sampling.stop.append(str(rng.choice(WORDS)))
    if rng.random() < 0.3:  # token ids, drawn from the whole vocabulary
        ids = rng.integers(0, vocab_size, size=num_words * 2).tolist()
        return serving_pb2.GenerateRequest(prompt_token_ids=ids, sampling=sampling)
    words = rng.choice(WORDS, size=num_words).tolist()
    return serving_pb2.GenerateRequest(prompt=" ".join(words), sampling=sampling)
