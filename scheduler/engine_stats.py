"""What an engine reports about itself (`Engine.stats()`), read from its scheduler."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from scheduler.config import EngineStats, TenantStats
from scheduler.request import RequestStatus
from scheduler.scheduler import Scheduler


def collect_stats(
    sched: Scheduler,
    num_waiting: int,
    pending_tenants: list[str],
    pending_loras: Sequence[str] = (),
    loras_served: tuple[str, ...] = (),
) -> EngineStats:
    """`num_waiting`: the engine's waiting sequences as of its last step; `pending_tenants`:
    the tenant of each sequence added since, not yet taken by a step; `pending_loras`: the
    adapter of each of those that has one."""
    pool = sched.kv.pool
    running, waiting = _lora_counts(sched, pending_loras)
    speculator = sched.speculator
    return EngineStats(
        num_running=sched.num_running,
        num_waiting=num_waiting + len(pending_tenants),
        num_blocks=pool.num_blocks,
        num_free_blocks=pool.num_free_blocks,
        num_preemptions=sched.num_preemptions,
        prefix_cache_queries=sched.kv.num_queries,
        prefix_cache_hits=sched.kv.num_hits,
        tenants=_tenant_stats(sched, pending_tenants),
        num_cached_blocks=pool.num_cached_blocks,
        lora_running=running,
        lora_waiting=waiting,
        loras_served=loras_served,
        max_loras=sched.max_loras,
        spec_proposed_tokens=speculator.num_proposed if speculator else 0,
        spec_accepted_tokens=speculator.num_accepted if speculator else 0,
    )


def _lora_counts(sched: Scheduler, pending: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    running: Counter[str] = Counter()
    waiting: Counter[str] = Counter(pending)
    for req in list(sched.requests.values()):  # a copy: the loop thread may add meanwhile
        if req.lora is not None and not req.is_finished:
            (running if req.status is RequestStatus.RUNNING else waiting)[req.lora.name] += 1
    return dict(running), dict(waiting)


def _tenant_stats(sched: Scheduler, pending: list[str]) -> dict[str, TenantStats]:
    # Copies first: the loop thread may add a tenant or a running request meanwhile.
    running = Counter(req.tenant for req in list(sched.running))
    queued = Counter(pending)
    tenants = {}
    for tenant, usage in list(sched.tenant_usage.items()):
        num_running = running[tenant]
        num_waiting = max(0, usage.num_unfinished - num_running) + queued.pop(tenant, 0)
        tenants[tenant] = TenantStats(
            num_running,
            num_waiting,
            usage.service,
            dict(usage.preemptions),
            usage.num_deadlines_met,
            usage.num_deadlines_missed,
        )
    for tenant, num_waiting in queued.items():
        tenants[tenant] = TenantStats(0, num_waiting, 0.0)
    return tenants
