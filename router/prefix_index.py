"""What the router believes a backend's prefix cache holds: the block hashes of the prompts
(and outputs) it sent there, least recently used first, at most as many blocks as the backend's
KV cache has.

It mirrors the engine's own cache (scheduler/kv_cache_manager.py): the same chained hashes
(common/prefix_hash.py), the same lookup that stops at the first block not held, eviction of
the least recently used block, and a request's blocks touched tail first so that its head,
the part most likely shared, is evicted last. It can be wrong: the engine also caches what
other clients send it, and evicts by its own clock. A wrong guess costs one recomputed prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixIndex:
    def __init__(self, block_size: int, capacity: int) -> None:
        if block_size < 1 or capacity < 1:
            raise ValueError(f"block_size and capacity must be >= 1, got {block_size}, {capacity}")
        self.block_size = block_size
        self.capacity = capacity
        self._last_used: OrderedDict[bytes, int] = OrderedDict()  # hash -> tick, oldest first

    def __len__(self) -> int:
        return len(self._last_used)

    @property
    def fill(self) -> float:
        """Share of the capacity in use: of two idle backends, the emptier one gets the next
        new prefix, so new prefixes spread instead of piling on one backend."""
        return len(self._last_used) / self.capacity

    def match(self, hashes: Sequence[bytes]) -> tuple[int, int]:
        """(leading blocks held, tick of the last of them): how long a prefix this backend
        holds, and when it last served it. (0, -1) when not even the first block is held."""
        last_used = self._last_used
        tick = -1
        for num_held, block_hash in enumerate(hashes):
            seen = last_used.get(block_hash)
            if seen is None:
                return num_held, tick
            tick = seen
        return len(hashes), tick

    def add(self, hashes: Sequence[bytes], tick: int) -> None:
        """The backend computes (or reuses) these blocks now."""
        last_used = self._last_used
        for block_hash in reversed(hashes):  # tail first: the head ends most recent
            last_used[block_hash] = tick
            last_used.move_to_end(block_hash)
        while len(last_used) > self.capacity:
            last_used.popitem(last=False)

    def clear(self) -> None:
        """The backend restarted: whatever it cached is gone."""
        self._last_used.clear()
