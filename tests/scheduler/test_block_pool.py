"""The block pool alone: reference counts, eviction order, verified hits."""

from __future__ import annotations

import pytest

from common.prefix_hash import hash_block, root_hash
from scheduler.block_pool import BlockPool


def test_allocate_and_free_count_references() -> None:
    pool = BlockPool(4)
    assert pool.allocate(3) == [0, 1, 2]
    assert pool.num_free_blocks == 1
    pool.take([1])  # a second holder of block 1
    pool.free([2, 1, 0])
    assert pool.num_free_blocks == 3  # block 1 is still held once
    assert pool.ref_cnts[1] == 1
    pool.free([1])
    assert pool.num_free_blocks == 4
    with pytest.raises(RuntimeError):
        pool.allocate(5)


def test_uncached_blocks_are_reused_before_cached_ones_least_recent_first() -> None:
    pool = BlockPool(5)
    assert pool.allocate(5) == [0, 1, 2, 3, 4]
    h0 = hash_block(root_hash("t"), [1, 2])
    h1 = hash_block(h0, [3, 4])
    pool.cache(0, h0, (1, 2))
    pool.cache(1, h1, (3, 4))
    pool.free([1, 0])  # a request's blocks, last first: its tail goes before its head
    pool.free([4, 3])  # not cached: reused first
    assert pool.num_cached_blocks == 2
    assert pool.allocate(2) == [3, 4]
    assert pool.allocate(1) == [1]  # evicts the least recently freed cached block
    assert pool.lookup(h1, (3, 4)) is None
    assert pool.lookup(h0, (1, 2)) == 0
    assert pool.num_cached_blocks == 1


def test_hit_is_verified_against_token_ids() -> None:
    pool = BlockPool(2)
    pool.allocate(1)
    h = hash_block(root_hash("t"), [5, 6])
    pool.cache(0, h, (5, 6))
    assert pool.lookup(h, (5, 6)) == 0
    assert pool.lookup(h, (5, 7)) is None


def test_tenant_salt_changes_every_hash() -> None:
    assert hash_block(root_hash("a"), [1, 2]) != hash_block(root_hash("b"), [1, 2])


def test_first_registration_of_a_prefix_wins() -> None:
    pool = BlockPool(2)
    pool.allocate(2)
    h = hash_block(root_hash("t"), [1])
    pool.cache(0, h, (1,))
    pool.cache(1, h, (1,))  # computed twice at once: the second copy stays private
    assert pool.lookup(h, (1,)) == 0
    assert pool.block_hashes[1] is None


def test_disabled_caching_caches_nothing() -> None:
    pool = BlockPool(1, enable_caching=False)
    pool.allocate(1)
    h = hash_block(root_hash("t"), [1])
    pool.cache(0, h, (1,))
    assert pool.lookup(h, (1,)) is None
