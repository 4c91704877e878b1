"""What an engine reports about itself (`Engine.stats()`), read from its scheduler."""

from __future__ import annotations

from collections import Counter

from scheduler.config import EngineStats, TenantStats
from scheduler.scheduler import Scheduler


def collect_stats(sched: Scheduler, num_waiting: int, pending_tenants: list[str]) -> EngineStats:
    """`num_waiting`: the engine's waiting sequences as of its last step; `pending_tenants`:
    the tenant of each sequence added since, not yet taken by a step."""
    pool = sched.kv.pool
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
        spec_proposed_tokens=speculator.num_proposed if speculator else 0,
        spec_accepted_tokens=speculator.num_accepted if speculator else 0,
    )


def _tenant_stats(sched: Scheduler, pending: list[str]) -> dict[str, TenantStats]:
    # Copies first: the loop thread may add a tenant or a running request meanwhile.
    running = Counter(req.tenant for req in list(sched.running))
    queued = Counter(pending)
    tenants = {}
    for tenant, usage in list(sched.tenant_usage.items()):
        num_running = running[tenant]
        num_waiting = max(0, usage.num_unfinished - num_running) + queued.pop(tenant, 0)
        tenants[tenant] = TenantStats(num_running, num_waiting, usage.service)
    for tenant, num_waiting in queued.items():
        tenants[tenant] = TenantStats(0, num_waiting, 0.0)
    return tenants
