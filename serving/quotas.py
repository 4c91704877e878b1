"""Per-tenant quotas, answered before any work is queued; frontend-agnostic (no grpc).

One admission covers a whole call: every sequence it creates (its prompts, times n each).
Three limits from the tenant's settings (serving/tenants.py), checked in this order:

- `max_tokens_per_request`: the call's prompt tokens + max_tokens for each of its sequences.
  Waiting never helps: no retry hint.
- `max_concurrent_requests`: the tenant's sequences admitted and not yet finished (running +
  waiting in the engine); a call holds one per sequence until it ends. A slot frees when a
  call ends, which nothing here can date, so there is no retry hint either.
- `max_tokens_per_minute`: a token bucket holding at most a minute's worth, refilled
  continuously. Admission takes the call's prompt tokens (each prompt once: its n sequences
  share it) and needs that many in the bucket; each generated token of every sequence is
  taken as it is produced and may run the bucket into debt, which later admissions wait
  out. The hint is the time until the bucket holds the prompts again.

    quotas = Quotas()
    admission = quotas.admit(tenant, num_prompt_tokens, max_tokens, n, num_prompts)
    admission.charge(num_new_tokens)                                   # as tokens stream
    admission.release()                                                # when the call ends
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.tenants import Tenant

RETRY_AFTER_KEY = "retry-after-ms"  # gRPC trailing metadata; milliseconds, an integer


class QuotaExceeded(Exception):
    """A request over one of its tenant's limits (gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, tenant: str, limit: str, message: str, retry_after_s: float | None) -> None:
        super().__init__(message)
        self.tenant = tenant
        self.limit = limit  # the field name of the limit, e.g. "max_tokens_per_minute"
        self.message = message
        self.retry_after_s = retry_after_s  # None where waiting does not help

    @property
    def retry_after_ms(self) -> int | None:
        return None if self.retry_after_s is None else max(1, math.ceil(self.retry_after_s * 1e3))


@dataclass(slots=True)
class _TenantState:
    num_in_flight: int = 0
    tokens: float = 0.0  # the bucket's level; below 0 while generated tokens are in debt
    updated: float = 0.0  # clock time of `tokens`
    rate: float | None = None  # tokens per second; None: no token limit


class Admission:
    """One admitted call's hold on its tenant's quotas."""

    def __init__(
        self,
        quotas: Quotas | None,
        state: _TenantState | None,
        num_prompt: int,
        num_sequences: int = 1,
    ) -> None:
        self._quotas = quotas
        self._state = state
        self._num_prompt = num_prompt
        self._num_sequences = num_sequences  # the concurrency slots it holds
        self._released = False

    def charge(self, num_tokens: int) -> None:
        """Generated tokens, taken from the bucket as they are produced."""
        if self._quotas is not None and self._state is not None and num_tokens:
            self._quotas._take(self._state, num_tokens)

    def release(self) -> None:
        """The call ended (any way): its concurrency slots are free. Idempotent."""
        if self._quotas is not None and self._state is not None and not self._released:
            self._released = True
            self._quotas._leave(self._state, self._num_sequences)

    def cancel(self) -> None:
        """The call was refused after admission (queue full, ...): give everything back,
        the prompt's tokens too, as if it had never been admitted."""
        if self._quotas is not None and self._state is not None and not self._released:
            self._quotas._take(self._state, -self._num_prompt)
        self.release()


UNLIMITED = Admission(None, None, 0)


class Quotas:
    """Quota state by tenant name; the limits come with each `admit`, so a reloaded tenants
    file applies to the next call while admitted requests keep their slots. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, _TenantState] = {}

    def admit(
        self,
        tenant: Tenant,
        num_prompt_tokens: int,
        max_tokens: int,
        n: int = 1,
        num_prompts: int = 1,
    ) -> Admission:
        """Admit one call: `num_prompts` prompts of `num_prompt_tokens` tokens in all, each
        with `n` sequences of up to `max_tokens`. Raises QuotaExceeded naming the limit; a
        refusal changes nothing."""
        if not tenant.has_quotas:
            return UNLIMITED
        sequences = num_prompts * n
        cap = tenant.max_tokens_per_request
        if cap is not None and num_prompt_tokens + sequences * max_tokens > cap:
            raise QuotaExceeded(
                tenant.name,
                "max_tokens_per_request",
                f"{_prompts(num_prompts, num_prompt_tokens)} + max_tokens ({max_tokens})"
                f"{_times(sequences)} is over the max_tokens_per_request ({cap}) of tenant "
                f"{tenant.name!r}",
                None,
            )
        with self._lock:
            state = self._state_of(tenant)
            limit = tenant.max_concurrent_requests
            if limit is not None and state.num_in_flight + sequences > limit:
                adds = f"; this call adds {sequences}" if sequences > 1 else ""
                raise QuotaExceeded(
                    tenant.name,
                    "max_concurrent_requests",
                    f"tenant {tenant.name!r} has {state.num_in_flight} sequences in flight"
                    f"{adds}: over its max_concurrent_requests ({limit})",
                    None,
                )
            if state.rate is not None:
                self._check_bucket(tenant, state, num_prompt_tokens)
                state.tokens -= num_prompt_tokens
            state.num_in_flight += sequences
        return Admission(self, state, num_prompt_tokens, sequences)

    def _state_of(self, tenant: Tenant) -> _TenantState:
        """The tenant's state, refilled to now under its current limits."""
        now = self._clock()
        state = self._states.get(tenant.name)
        per_minute = tenant.max_tokens_per_minute
        if state is None:
            state = self._states[tenant.name] = _TenantState(updated=now)
            state.tokens = float(per_minute or 0)
        self._refill(state, now)
        if per_minute is None:
            state.rate = None
        else:
            if state.rate is None:  # a limit new since the last call starts full
                state.tokens = float(per_minute)
            state.rate = per_minute / 60.0
            state.tokens = min(state.tokens, float(per_minute))
        return state

    def _check_bucket(self, tenant: Tenant, state: _TenantState, num_prompt: int) -> None:
        capacity = tenant.max_tokens_per_minute
        assert capacity is not None and state.rate is not None
        if num_prompt > capacity:
            raise QuotaExceeded(
                tenant.name,
                "max_tokens_per_minute",
                f"the prompt ({num_prompt} tokens) is more than the max_tokens_per_minute "
                f"({capacity}) of tenant {tenant.name!r} can ever hold",
                None,
            )
        if state.tokens < num_prompt:
            wait = (num_prompt - state.tokens) / state.rate
            raise QuotaExceeded(
                tenant.name,
                "max_tokens_per_minute",
                f"tenant {tenant.name!r} is over its max_tokens_per_minute ({capacity}): the "
                f"prompt needs {num_prompt} tokens, {max(0, int(state.tokens))} are left; "
                f"retry in {wait:.1f} s",
                wait,
            )

    @staticmethod
    def _refill(state: _TenantState, now: float) -> None:
        if state.rate is not None:
            capacity = state.rate * 60.0
            state.tokens = min(capacity, state.tokens + (now - state.updated) * state.rate)
        state.updated = now

    def _take(self, state: _TenantState, num_tokens: int) -> None:
        with self._lock:
            self._refill(state, self._clock())
            if state.rate is not None:
                state.tokens = min(state.rate * 60.0, state.tokens - num_tokens)

    def _leave(self, state: _TenantState, num_sequences: int) -> None:
        with self._lock:
            state.num_in_flight -= num_sequences

    def num_in_flight(self, tenant: str) -> int:
        with self._lock:
            state = self._states.get(tenant)
            return 0 if state is None else state.num_in_flight


def _prompts(num_prompts: int, num_tokens: int) -> str:
    if num_prompts == 1:
        return f"prompt ({num_tokens} tokens)"
    return f"{num_prompts} prompts ({num_tokens} tokens)"


def _times(sequences: int) -> str:
    return f" x {sequences} sequences" if sequences > 1 else ""
