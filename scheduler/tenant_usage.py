"""What each tenant has been served: the token counts, and the price of them that the
fair-share (VTC) policy compares across tenants."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(slots=True)
class TenantUsage:
    """What one tenant has been served, shared by its requests in the scheduler.

    `service` prices the work: `w_in` per token computed as a prompt (charged when a request
    is admitted, for the tokens the prefix cache does not hold; again after a preemption) and
    `w_out` per generated token. `counter` is VTC's virtual counter: service divided by the
    tenant's weight at the time of each charge, raised by the fair-share policy's lifts.
    """

    num_input_tokens: int = 0  # prompt tokens computed (again, after a preemption)
    num_output_tokens: int = 0  # tokens generated
    service: float = 0.0
    counter: float = 0.0
    weight: float = 1.0  # share of the engine under contention
    w_in: float = 1.0
    w_out: float = 2.0
    num_unfinished: int = 0  # requests in the scheduler, waiting or running
    num_running: int = 0  # of those, running (holding a seat)
    preemptions: dict[str, int] = field(default_factory=dict)  # by cause, as its victim
    num_deadlines_met: int = 0  # requests with a deadline that finished by it
    num_deadlines_missed: int = 0  # ended for their deadline, or finished after it

    def charge_prefill(self, num_tokens: int) -> None:
        cost = self.w_in * num_tokens
        self.service += cost
        self.counter += cost / self.weight

    def charge_output(self, num_tokens: int) -> None:
        self.num_output_tokens += num_tokens
        cost = self.w_out * num_tokens
        self.service += cost
        self.counter += cost / self.weight


class TenantLedger:
    """Every tenant the scheduler has seen, each with its usage, created on first sight with
    its weight and the VTC prices (`w_in`, `w_out`)."""

    def __init__(self, w_in: float = 1.0, w_out: float = 2.0) -> None:
        self.w_in = w_in
        self.w_out = w_out
        self.usage: dict[str, TenantUsage] = {}
        self._weights: dict[str, float] = {}  # tenants not named weigh 1

    def of(self, tenant: str) -> TenantUsage:
        usage = self.usage.get(tenant)
        if usage is None:
            usage = self.usage[tenant] = TenantUsage(
                weight=self._weights.get(tenant, 1.0), w_in=self.w_in, w_out=self.w_out
            )
        return usage

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """Each tenant's share under contention; tenants not named weigh 1. Counters keep what
        they hold: charges from now on use the new weights."""
        for tenant, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(f"weight of tenant {tenant!r} must be a number, got {weight!r}")
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"weight of tenant {tenant!r} must be > 0, got {weight}")
        self._weights = {tenant: float(weight) for tenant, weight in weights.items()}
        for tenant, usage in self.usage.items():
            usage.weight = self._weights.get(tenant, 1.0)
