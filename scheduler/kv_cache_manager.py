"""Block tables of requests over the block pool: allocation on demand and prefix-cache hits.

Blocks are allocated only for tokens about to be computed, never ahead of need, so the
only unused slots are those at the end of each request's last block.
"""

from __future__ import annotations

from common.prefix_hash import extend_block_hashes, num_lookup_blocks, root_hash
from scheduler.block_pool import BlockPool
from scheduler.request import Request


class KVCacheManager:
    def __init__(self, num_blocks: int, block_size: int, enable_caching: bool = True) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.pool = BlockPool(num_blocks, enable_caching)
        self.num_queries = 0  # prompt tokens looked up in the prefix cache
        self.num_hits = 0  # of those, tokens found
        self._root_hashes: dict[str, bytes] = {}

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def find_cached_prefix(self, req: Request) -> list[int]:
        """The longest run of cached blocks matching the request's leading full blocks. The
        last token is always left to compute: the worker samples from its logits."""
        if not self.enable_caching or req.params.echo:  # echo needs every prompt position
            return []
        bs = self.block_size
        num_blocks = num_lookup_blocks(len(req.all_token_ids), bs)
        self._extend_hashes(req, num_blocks)
        tokens = req.all_token_ids
        lookup = self.pool.lookup
        hits = []
        for i in range(num_blocks):
            block_id = lookup(req.block_hashes[i], tuple(tokens[i * bs : (i + 1) * bs]))
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def allocate_slots(self, req: Request, num_new_tokens: int) -> list[int] | None:
        """Blocks for `num_new_tokens` more computed tokens of a running request, appended to
        its block table. Returns them ([] when none are needed), or None, changing nothing,
        when blocks lack."""
        pool = self.pool
        num_new_blocks = self.blocks_needed(req.num_computed_tokens + num_new_tokens) - len(
            req.block_ids
        )
        if num_new_blocks <= 0:
            return []
        if num_new_blocks > pool.num_free_blocks:
            return None
        new_blocks = pool.allocate(num_new_blocks)
        req.block_ids.extend(new_blocks)
        return new_blocks

    def admit(self, req: Request, num_new_tokens: int, cached: list[int]) -> int | None:
        """Start a waiting request's block table: its prefix-cache hits `cached`, then blocks
        for `num_new_tokens` tokens after them. Returns how many tokens the hits hold (they
        count as computed), or None, changing nothing, when blocks lack."""
        pool = self.pool
        num_cached_tokens = len(cached) * self.block_size
        num_new_blocks = self.blocks_needed(num_cached_tokens + num_new_tokens) - len(cached)
        # Hits nobody holds sit in the free queue: taking them uses free blocks too.
        num_idle_hits = sum(1 for block_id in cached if pool.ref_cnts[block_id] == 0)
        if num_new_blocks + num_idle_hits > pool.num_free_blocks:
            return None
        pool.take(cached)
        req.block_ids = cached + pool.allocate(num_new_blocks)
        req.num_cached_blocks = len(cached)
        if self.enable_caching and not req.params.echo:
            self.num_queries += len(req.all_token_ids)
            self.num_hits += num_cached_tokens
        return num_cached_tokens

    def cache_full_blocks(self, req: Request) -> None:
        """Register the request's newly computed full blocks in the prefix cache."""
        bs = self.block_size
        num_full = req.num_computed_tokens // bs
        if num_full <= req.num_cached_blocks:
            return
        self._extend_hashes(req, num_full)
        tokens = req.all_token_ids
        for i in range(req.num_cached_blocks, num_full):
            block_tokens = tuple(tokens[i * bs : (i + 1) * bs])
            self.pool.cache(req.block_ids[i], req.block_hashes[i], block_tokens)
        req.num_cached_blocks = num_full

    def trim(self, req: Request, num_tokens: int) -> None:
        """Give back the blocks past those `num_tokens` tokens fill: after a speculative step,
        blocks that held only rejected proposals (never hashed: never counted computed)."""
        keep = self.blocks_needed(num_tokens)
        if len(req.block_ids) > keep:
            self.pool.free(req.block_ids[keep:][::-1])
            del req.block_ids[keep:]

    def free(self, req: Request) -> None:
        self.pool.free(req.block_ids[::-1])
        req.block_ids = []
        req.num_cached_blocks = 0

    def _extend_hashes(self, req: Request, num_blocks: int) -> None:
        if len(req.block_hashes) >= num_blocks:
            return
        # The adapter salts the root like the tenant: its K/V differ from the base model's.
        key = req.tenant if req.lora is None else f"{req.tenant}\0lora:{req.lora.lora_id}"
        root = self._root_hashes.get(key)
        if root is None:
            root = self._root_hashes[key] = root_hash(key)
        extend_block_hashes(req.block_hashes, root, req.all_token_ids, self.block_size, num_blocks)
