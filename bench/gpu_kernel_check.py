"""The device check's kernel part: the Triton backend against the torch reference.

Each trial is one launch over a random mix of decodes and prefill chunks after cached
prefixes, blocks drawn from a shuffled free list and a cache full of other values. The
reference runs in float32 on the same inputs rounded to the kernel's dtype, so the error is
the kernel's own; the torch reference run in that dtype is reported beside it, for scale.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch

from contract.step import SamplingOptions
from worker.attention import create_attention_backend
from worker.attention.torch_backend import TorchAttentionBackend
from worker.step_batch import RequestState, build_step_batch


@dataclass(slots=True, frozen=True)
class MixSizes:
    max_seqs: int
    max_context: int
    max_chunk: int


# On a GPU: up to 24 sequences, contexts to 2,048, chunks to 512. In the CPU interpreter, a
# few short ones (it runs each program in numpy).
GPU_SIZES = MixSizes(max_seqs=24, max_context=2048, max_chunk=512)
CPU_SIZES = MixSizes(max_seqs=5, max_context=70, max_chunk=20)
GPU_HEADS = [(32, 8, 128), (32, 32, 128)]  # (query heads, KV heads, head_dim): GQA, MHA
CPU_HEADS = [(8, 2, 32), (4, 4, 32)]
GREEDY = SamplingOptions(temperature=0.0)


def random_mix(
    rng: random.Random, sizes: MixSizes, block_size: int, decodes_only: bool
) -> tuple[list[tuple[RequestState, int]], int]:
    """(the step's sequences with their query lengths, blocks the cache needs)."""
    seqs = []
    for i in range(rng.randint(1, sizes.max_seqs)):
        if decodes_only or rng.random() < 0.5:
            num_query, context = 1, rng.randint(1, sizes.max_context)
        else:
            num_query = rng.randint(1, sizes.max_chunk)
            context = num_query + rng.randint(0, sizes.max_context - num_query)
        seqs.append((i, num_query, context))
    num_blocks = sum(-(-context // block_size) for _, _, context in seqs) + 8
    free = list(range(num_blocks))
    rng.shuffle(free)
    scheduled = []
    for i, num_query, context in seqs:
        blocks = [free.pop() for _ in range(-(-context // block_size))]
        state = RequestState(f"s{i}", [0] * context, blocks, GREEDY, context - num_query, context)
        scheduled.append((state, num_query))
    return scheduled, num_blocks


def _attend(backend, scheduled, block_size, device, q, k, v, caches):
    k_cache, v_cache = (c.clone() for c in caches)
    batch = build_step_batch(scheduled, block_size, device, backend)
    out = backend.forward(q, k, v, k_cache, v_cache, batch.attn)
    return out.float(), k_cache, v_cache


def one_trial(
    seed: int,
    device: torch.device,
    dtype: torch.dtype,
    sizes: MixSizes,
    block_size: int,
    heads: tuple[int, int, int],
) -> dict[str, float]:
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    n_heads, n_kv_heads, head_dim = heads
    scheduled, num_blocks = random_mix(rng, sizes, block_size, decodes_only=seed % 4 == 0)
    num_tokens = sum(n for _, n in scheduled)

    def randn(*shape: int) -> torch.Tensor:  # rounded to dtype, held in float32
        return torch.randn(shape, generator=gen, device=device).to(dtype).float()

    caches = randn(2, num_blocks, block_size, n_kv_heads, head_dim)
    q = randn(num_tokens, n_heads, head_dim)
    kv = randn(num_tokens, 2 * n_kv_heads, head_dim)  # K and V: strided views, as the model's
    ref, ref_k, ref_v = _attend(
        TorchAttentionBackend(block_size), scheduled, block_size, device,
        q, kv[:, :n_kv_heads], kv[:, n_kv_heads:], caches,
    )  # fmt: skip
    low_q, low_kv, low_caches = q.to(dtype), kv.to(dtype), caches.to(dtype)
    triton = create_attention_backend("triton", device, block_size)
    out, out_k, out_v = _attend(
        triton, scheduled, block_size, device,
        low_q, low_kv[:, :n_kv_heads], low_kv[:, n_kv_heads:], low_caches,
    )  # fmt: skip
    torch_low, _, _ = _attend(
        TorchAttentionBackend(block_size), scheduled, block_size, device,
        low_q, low_kv[:, :n_kv_heads], low_kv[:, n_kv_heads:], low_caches,
    )  # fmt: skip
    scale = ref.abs().max().item()
    cache_equal = torch.equal(out_k.float(), ref_k) and torch.equal(out_v.float(), ref_v)
    return {
        "abs_err": (out - ref).abs().max().item(),
        "rel_err": (out - ref).abs().max().item() / scale,
        "torch_rel_err": (torch_low - ref).abs().max().item() / scale,
        "cache_equal": float(cache_equal),
        "num_tokens": num_tokens,
        "num_seqs": len(scheduled),
    }


def kernel_check(device: torch.device, dtypes: list[torch.dtype], trials: int) -> dict:
    """Worst errors per dtype over trials x block sizes 16, 32 x GQA and MHA."""
    on_gpu = device.type == "cuda"
    sizes, heads_list = (GPU_SIZES, GPU_HEADS) if on_gpu else (CPU_SIZES, CPU_HEADS)
    results = {}
    for dtype in dtypes:
        started = time.monotonic()
        worst = {"abs_err": 0.0, "rel_err": 0.0, "torch_rel_err": 0.0, "cache_equal": 1.0}
        launches, tokens = 0, 0
        for block_size in (16, 32):
            for heads in heads_list:
                for trial in range(trials):
                    seed = 1000 * block_size + 100 * heads[1] + trial
                    found = one_trial(seed, device, dtype, sizes, block_size, heads)
                    for key in ("abs_err", "rel_err", "torch_rel_err"):
                        worst[key] = max(worst[key], found[key])
                    worst["cache_equal"] = min(worst["cache_equal"], found["cache_equal"])
                    launches += 1
                    tokens += int(found["num_tokens"])
        results[str(dtype).removeprefix("torch.")] = {
            **worst,
            "cache_equal": bool(worst["cache_equal"]),
            "launches": launches,
            "tokens": tokens,
            "seconds": round(time.monotonic() - started, 1),
        }
    return results
