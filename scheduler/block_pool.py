"""The pool of KV-cache blocks: reference counts, a free queue and the prefix cache.

A block is free when no request holds it (ref_cnt 0). A freed block that is full keeps its
hash and stays findable in the prefix cache until it is handed out again, so a later request
with the same prefix reuses its K/V instead of recomputing them. The free queue is ordered for
eviction: blocks without a hash in front (they are worth nothing), then hashed blocks from
least to most recently freed. Block hashes come from common/prefix_hash.py.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class BlockPool:
    """Block state lives in flat lists indexed by block id, not in one object per block: a
    cache of 100k+ blocks would otherwise give Python's garbage collector 100k+ objects to
    walk on every full collection (tens of milliseconds of pause in the engine loop)."""

    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.ref_cnts = [0] * num_blocks
        self.block_hashes: list[bytes | None] = [None] * num_blocks  # set while cached
        self._token_ids: list[tuple[int, ...]] = [()] * num_blocks  # to verify a hash hit
        # Free block ids in eviction order (the front goes first).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._cached: dict[bytes, int] = {}  # block hash -> block id

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached or not."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def free_block_ids(self) -> list[int]:
        """In eviction order."""
        return list(self._free)

    def allocate(self, num_blocks: int) -> list[int]:
        """Hand out `num_blocks` blocks, evicting cached ones from the front of the queue."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"asked for {num_blocks} blocks, {len(self._free)} free")
        block_ids = []
        popitem = self._free.popitem
        for _ in range(num_blocks):
            block_id = popitem(last=False)[0]
            if self.block_hashes[block_id] is not None:
                self._evict(block_id)
            self.ref_cnts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def lookup(self, block_hash: bytes, token_ids: tuple[int, ...]) -> int | None:
        """The cached block holding exactly these tokens after this prefix, if any."""
        block_id = self._cached.get(block_hash)
        if block_id is None or self._token_ids[block_id] != token_ids:
            return None
        return block_id

    def take(self, block_ids: Sequence[int]) -> None:
        """A request takes prefix-cache hits: they leave the free queue if nobody held them."""
        ref_cnts = self.ref_cnts
        for block_id in block_ids:
            if ref_cnts[block_id] == 0:
                del self._free[block_id]
            ref_cnts[block_id] += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Give blocks back. Callers pass a request's blocks last first, so that of two cached
        blocks of one request, its tail (the least likely to be shared) is evicted first."""
        free = self._free
        ref_cnts = self.ref_cnts
        for block_id in block_ids:
            ref_cnts[block_id] -= 1
            if ref_cnts[block_id] == 0:
                free[block_id] = None
                if self.block_hashes[block_id] is None:
                    free.move_to_end(block_id, last=False)

    def cache(self, block_id: int, block_hash: bytes, token_ids: tuple[int, ...]) -> None:
        """Register a full, computed block. If another block already holds this prefix (two
        requests computed it at once), the first stays and this one remains private."""
        if not self.enable_caching or block_hash in self._cached:
            return
        self.block_hashes[block_id] = block_hash
        self._token_ids[block_id] = token_ids
        self._cached[block_hash] = block_id

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix: the worker's KV cache no longer holds them (it was
        restarted, or reconnected after a failure)."""
        self._cached.clear()
        self.block_hashes = [None] * self.num_blocks
        self._token_ids = [()] * self.num_blocks

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hashes[block_id]
        if self._cached.get(block_hash) == block_id:
            del self._cached[block_hash]
        self.block_hashes[block_id] = None
        self._token_ids[block_id] = ()
