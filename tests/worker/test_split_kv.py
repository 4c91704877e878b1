"""Split-KV decode equals the torch reference, under Triton's CPU interpreter.

Each trial is one attention launch over a random mix (decodes with contexts to 8,192 tokens,
sometimes prefill chunks beside them) with the context of every tile cut into 2-16 segments,
then reduced. The interpreter runs each program in numpy at about 10 ms per key tile, so the
longest contexts come with the fewest KV heads: keys x KV heads stay near 10,000 a trial.
"""

from __future__ import annotations

import random

import pytest
import torch

from contract.sampling import SamplingParams
from worker.attention.torch_backend import TorchAttentionBackend
from worker.attention.triton_backend import (
    MAX_SPLITS,
    TritonAttentionBackend,
    split_count,
    triton_missing,
)
from worker.step_batch import RequestState, build_step_batch

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

CPU = torch.device("cpu")
GREEDY = SamplingParams(temperature=0.0)
H100_SMS = 132
# (KV heads, query heads per KV head, longest context): 1-8 KV heads, contexts to 8,192.
SHAPES = [(1, 4, 8192), (2, 2, 4096), (4, 1, 2048), (8, 3, 1024)]


def long_mix(rng: random.Random, longest: int, block_size: int, decodes_only: bool):
    """(RequestState, tokens this step) for 1-4 sequences, one of them `longest` long, over a
    shuffled block list; and the number of blocks the cache needs."""
    contexts = [longest] + [rng.randint(1, max(1, longest // 4)) for _ in range(rng.randint(0, 3))]
    queries = [1 if decodes_only or rng.random() < 0.5 else rng.randint(2, 12) for _ in contexts]
    num_blocks = sum(-(-c // block_size) for c in contexts) + 4
    free = list(range(num_blocks))
    rng.shuffle(free)
    scheduled = []
    for i, (context, num_query) in enumerate(zip(contexts, queries, strict=True)):
        blocks = [free.pop() for _ in range(-(-context // block_size))]
        state = RequestState(f"s{i}", [0] * context, blocks, GREEDY, context - num_query, context)
        scheduled.append((state, num_query))
    rng.shuffle(scheduled)
    return scheduled, num_blocks


def split_trial(seed: int, shape: tuple[int, int, int], dtype: torch.dtype, num_splits: int):
    """(largest |split - reference|, largest |reference|) of one launch; the reference is
    the torch backend in the same dtype, on the same inputs."""
    n_kv_heads, group, longest = shape
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    block_size, head_dim = rng.choice([16, 32]), 32
    # Mixed steps split only when forced; decode-only steps are the ones the policy splits.
    scheduled, num_blocks = long_mix(rng, longest, block_size, decodes_only=seed % 2 == 0)
    num_tokens = sum(n for _, n in scheduled)
    n_heads = n_kv_heads * group
    cache = torch.randn(2, num_blocks, block_size, n_kv_heads, head_dim, generator=gen).to(dtype)
    q = torch.randn(num_tokens, n_heads, head_dim, generator=gen).to(dtype)
    kv = torch.randn(num_tokens, 2 * n_kv_heads, head_dim, generator=gen).to(dtype)
    outs = []
    split = TritonAttentionBackend(block_size, CPU, num_splits=num_splits)
    for backend in (TorchAttentionBackend(block_size), split):
        k_cache, v_cache = cache.clone()
        batch = build_step_batch(scheduled, block_size, CPU, backend)
        if backend is split and batch.attn.max_query_len == 1:
            assert backend.splits_for(batch.attn, n_kv_heads) == num_splits
        out = backend.forward(q, kv[:, :n_kv_heads], kv[:, n_kv_heads:], k_cache, v_cache,
                              batch.attn)  # fmt: skip
        assert out.dtype == dtype
        outs.append(out.float())
    reference, got = outs
    return (got - reference).abs().max().item(), reference.abs().max().item()


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES, ids=[f"kv{s[0]}-group{s[1]}-ctx{s[2]}" for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
def test_split_kv_equals_the_reference(shape, dtype) -> None:
    seed = 100 * shape[0] + shape[1] + (dtype == torch.float16)
    num_splits = random.Random(seed).choice([2, 4, 8, MAX_SPLITS])
    error, scale = split_trial(seed, shape, dtype, num_splits)
    if dtype == torch.float32:
        assert error < 1e-5, f"seed {seed}, {num_splits} splits: differs by {error}"
    else:
        # Both round their output to float16 (11 bits); the kernel also rounds each softmax
        # weight to float16 before weighting V: within two units in the last place at the
        # largest output.
        assert error <= 2 * 2**-10 * scale, f"seed {seed}, {num_splits} splits: {error}"


def test_a_split_with_no_keys_weighs_nothing() -> None:
    # Three keys cut 16 ways: 15 splits hold nothing; every padding row attends to nothing.
    error, _ = split_trial(7, (2, 2, 3), torch.float32, 16)
    assert error < 1e-6


def test_the_split_count_fills_the_sms_only_when_the_grid_leaves_them_idle() -> None:
    # Batch-1 decode of an 8-KV-head model on an H100: 8 programs for 132 SMs -> 16 splits.
    assert split_count(1 * 8, 4096, H100_SMS) == 16
    # Llama-2-7B (32 KV heads), batch 1: 32 programs; 8 splits make 256, two per SM.
    assert split_count(32, 4096, H100_SMS) == 8
    assert split_count(4 * 32, 4096, H100_SMS) == 2
    assert split_count(8 * 32, 4096, H100_SMS) == 1  # 256 programs fill 132 SMs already
    # Segments keep at least 256 keys: a short model length splits less.
    assert split_count(8, 1024, H100_SMS) == 4
    assert split_count(8, 200, H100_SMS) == 1
    for programs in range(1, 300):
        splits = split_count(programs, 8192, H100_SMS)
        assert splits & (splits - 1) == 0 and 1 <= splits <= MAX_SPLITS


def test_only_decode_only_steps_split() -> None:
    backend = TritonAttentionBackend(64, CPU)
    backend.num_sms = H100_SMS
    blocks = [list(range(64 * i, 64 * i + 64)) for i in range(3)]  # 64 blocks of 64: 4,096
    decodes = [(RequestState(f"d{i}", [0] * 4096, blocks[i], GREEDY, 4095, 4095), 1)
               for i in range(2)]  # fmt: skip
    chunk = (RequestState("p", [0] * 4096, blocks[2], GREEDY, 4086, 4086), 10)
    # 2 sequences x 4 KV heads: 8 programs -> 16 splits; with a chunk beside them, none.
    assert backend.splits_for(build_step_batch(decodes, 64, CPU, backend).attn, 4) == 16
    assert backend.splits_for(build_step_batch([*decodes, chunk], 64, CPU, backend).attn, 4) == 1
    assert TritonAttentionBackend(16, CPU).num_sms == 1  # the interpreter: never by itself
    with pytest.raises(ValueError, match="power of two"):
        TritonAttentionBackend(16, CPU, num_splits=3)
