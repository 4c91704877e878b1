"""Prefix-cache block hashes: the engine's KV cache keys its full blocks by them
(scheduler/kv_cache_manager.py), and the router hashes prompts the same way to send each
request where its prefix is cached (router/prefix_index.py).

Block i's hash chains from block i-1's, so equal hashes mean equal prefixes, not just equal
blocks; the chain starts from a per-tenant root, so one tenant's prompts never match (or
time) another's.

    # block_size 4, tokens [1, 5, 9, 2, 7, 7, 3, 8, 6] -> blocks [1 5 9 2] [7 7 3 8], 6 left over
    h0 = hash_block(root_hash("acme"), [1, 5, 9, 2]); h1 = hash_block(h0, [7, 7, 3, 8])
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence


def root_hash(tenant: str) -> bytes:
    """The parent hash of a request's first block. Salting it with the tenant keeps each
    tenant's prefixes apart, so one tenant cannot probe another's prompts by cache timing."""
    return hashlib.blake2b(tenant.encode(), digest_size=16, person=b"loom-prefix").digest()


def hash_block(parent_hash: bytes, token_ids: Sequence[int]) -> bytes:
    """A full block's hash, chained from its parent's, so equal hashes mean equal prefixes."""
    return hashlib.blake2b(parent_hash + array("i", token_ids).tobytes(), digest_size=16).digest()


def num_lookup_blocks(num_tokens: int, block_size: int) -> int:
    """The full blocks of a prompt the prefix cache can serve: the last token is always
    computed (its logits give the first sampled token), so it never counts."""
    return max(0, num_tokens - 1) // block_size


def extend_block_hashes(
    hashes: list[bytes], root: bytes, token_ids: Sequence[int], block_size: int, num_blocks: int
) -> list[bytes]:
    """Extend `hashes`, those of the first len(hashes) full blocks of `token_ids` chained from
    `root` (a tenant's root_hash), to its first `num_blocks` blocks, in place; returns it."""
    parent = hashes[-1] if hashes else root
    for i in range(len(hashes), num_blocks):
        parent = hash_block(parent, token_ids[i * block_size : (i + 1) * block_size])
        hashes.append(parent)
    return hashes
