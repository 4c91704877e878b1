"""Preemption for share and priority: which running requests give up their places so that the
waiting request next in line fits.

When that request finds no seat (`max_num_seqs`), no block or no budget, the scheduler walks
the running requests from the least important (the end of the policy's running order) and
takes as victims those the policy ranks below it (`QueuePolicy.preempts`: a tenant further over
its share that keeps at least an even split of the seats, a lower priority) and that have run
their quantum: `preemption_quantum` output
tokens since their last admission, so a request preempted is never preempted again before it
has produced tokens, and two backlogged tenants trade places at most once a quantum, not
every step. It stops as soon as the victims together make room: a seat, the blocks its next
chunk needs (prefix-cache hits that only the victims held count as blocks to take), and a
budget (the victims' tokens of this step return to it). If all of them would not make room,
none is preempted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.kv_cache_manager import KVCacheManager
from scheduler.queue_policy import QueuePolicy
from scheduler.request import Request


@dataclass(slots=True, frozen=True)
class Room:
    """What the request next in line needs, and what this step has left."""

    req: Request
    cached: list[int]  # its prefix-cache hits (block ids)
    budget: int  # tokens left in this step
    num_free_seats: int  # max_num_seqs less the running requests (may be 0)
    long_prefill_threshold: int


def has_run_quantum(req: Request, quantum: int) -> bool:
    return len(req.output_token_ids) - req.num_output_tokens_at_admission >= quantum


def choose_victims(
    room: Room,
    running: Sequence[Request],
    policy: QueuePolicy,
    quantum: int,
    kv: KVCacheManager,
    scheduled_tokens: dict[str, int],  # this step's tokens of each scheduled request
) -> list[tuple[Request, str]] | None:
    """The victims (each with its cause), least important first, that together make room for
    `room.req`; None when no set of them would."""
    victims: list[tuple[Request, str]] = []
    released: Counter[int] = Counter()  # block id -> holds the victims give up
    given_up: Counter[str] = Counter()  # tenant -> seats its victims give up
    returned = 0
    for victim in reversed(running):
        if not has_run_quantum(victim, quantum):
            continue
        cause = policy.preempts(victim, room.req, given_up[victim.tenant])
        if cause is None:
            continue
        victims.append((victim, cause))
        given_up[victim.tenant] += 1
        released.update(victim.block_ids)
        returned += scheduled_tokens.get(victim.req_id, 0)
        if _fits(room, len(victims), released, room.budget + returned, kv):
            return victims
    return None


def _fits(
    room: Room, num_seats: int, released: Counter[int], budget: int, kv: KVCacheManager
) -> bool:
    if room.num_free_seats + num_seats < 1 or budget < 1:
        return False
    pool = kv.pool
    ref_cnts = pool.ref_cnts
    req, cached = room.req, room.cached
    num_cached_tokens = len(cached) * kv.block_size
    num_new = min(req.num_tokens - num_cached_tokens, room.long_prefill_threshold, budget)
    num_new_blocks = kv.blocks_needed(num_cached_tokens + num_new) - len(cached)
    num_freed = sum(1 for block_id, n in released.items() if ref_cnts[block_id] == n)
    # As KVCacheManager.admit counts them: hits nobody will hold sit in the free queue.
    num_idle_hits = sum(1 for block_id in cached if ref_cnts[block_id] == released[block_id])
    return num_new_blocks + num_idle_hits <= pool.num_free_blocks + num_freed
