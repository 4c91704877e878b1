"""The pool of KV-cache blocks: reference counts, a free queue and the prefix cache.

A block is free when no request holds it (ref_cnt 0). A freed block that is full keeps its
hash and stays findable in the prefix cache until it is handed out again, so a later request
with the same prefix reuses its K/V instead of recomputing them. The free queue is ordered for
eviction: blocks without a hash in front (they are worth nothing), then hashed blocks from
least to most recently freed.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass


def root_hash(tenant: str) -> bytes:
    """The parent hash of a request's first block. Salting it with the tenant keeps each
    tenant's prefixes apart, so one tenant cannot probe another's prompts by cache timing."""
    return hashlib.blake2b(tenant.encode(), digest_size=16, person=b"loom-prefix").digest()


def hash_block(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """A full block's hash, chained from its parent's, so equal hashes mean equal prefixes."""
    return hashlib.blake2b(parent_hash + array("i", token_ids).tobytes(), digest_size=16).digest()


@dataclass(slots=True, eq=False)
class KVBlock:
    block_id: int
    ref_cnt: int = 0
    block_hash: bytes | None = None  # set while the block is in the prefix cache
    token_ids: tuple[int, ...] = ()  # what the block holds, to verify a hash hit


class BlockPool:
    def __init__(self, num_blocks: int, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVBlock(i) for i in range(num_blocks)]
        # block_id -> block, in eviction order (the front goes first).
        self._free: OrderedDict[int, KVBlock] = OrderedDict((b.block_id, b) for b in self.blocks)
        self._cached: dict[bytes, KVBlock] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds, cached or not."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        return len(self._cached)

    def allocate(self, num_blocks: int) -> list[int]:
        """Hand out `num_blocks` blocks, evicting cached ones from the front of the queue."""
        if num_blocks > len(self._free):
            raise RuntimeError(f"asked for {num_blocks} blocks, {len(self._free)} free")
        block_ids = []
        free = self._free
        for _ in range(num_blocks):
            block_id, block = free.popitem(last=False)
            if block.block_hash is not None:
                self._evict(block)
            block.ref_cnt = 1
            block_ids.append(block_id)
        return block_ids

    def lookup(self, block_hash: bytes, token_ids: tuple[int, ...]) -> KVBlock | None:
        """The cached block holding exactly these tokens after this prefix, if any."""
        block = self._cached.get(block_hash)
        if block is None or block.token_ids != token_ids:
            return None
        return block

    def take(self, blocks: Sequence[KVBlock]) -> None:
        """A request takes prefix-cache hits: they leave the free queue if nobody held them."""
        for block in blocks:
            if block.ref_cnt == 0:
                del self._free[block.block_id]
            block.ref_cnt += 1

    def free(self, block_ids: Sequence[int]) -> None:
        """Give blocks back. Callers pass a request's blocks last first, so that of two cached
        blocks of one request, its tail (the least likely to be shared) is evicted first."""
        free = self._free
        for block_id in block_ids:
            block = self.blocks[block_id]
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                free[block_id] = block
                if block.block_hash is None:
                    free.move_to_end(block_id, last=False)

    def cache(self, block_id: int, block_hash: bytes, token_ids: tuple[int, ...]) -> None:
        """Register a full, computed block. If another block already holds this prefix (two
        requests computed it at once), the first stays and this one remains private."""
        if not self.enable_caching or block_hash in self._cached:
            return
        block = self.blocks[block_id]
        block.block_hash = block_hash
        block.token_ids = token_ids
        self._cached[block_hash] = block

    def _evict(self, block: KVBlock) -> None:
        if self._cached.get(block.block_hash) is block:
            del self._cached[block.block_hash]
        block.block_hash = None
        block.token_ids = ()
