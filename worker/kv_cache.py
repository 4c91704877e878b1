"""The physical KV cache: K and V per layer, in the layout the attention backend reads
(the torch reference: [num_blocks, block_size, n_kv_heads, head_dim] for both)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from worker.attention.backend import AttentionBackend
from worker.host_memory import zeros_on_huge_pages
from worker.model_args import ModelArgs

GIB = 1 << 30
# Without a budget, CPU takes at most this much, and no more than this many sequences of
# the full model length need: a tiny model should not claim a gigabyte it cannot use.
CPU_DEFAULT_BUDGET = GIB
CPU_DEFAULT_MAX_SEQS = 256
CPU_MAX_MEMORY_FRACTION = 0.25
# Without a budget, CUDA takes this share of the memory free once the weights are loaded,
# leaving the rest for activations and the allocator.
CUDA_FREE_MEMORY_FRACTION = 0.8


@dataclass(slots=True)
class KVCache:
    # One zero-initialised tensor [n_layers, K and V elements of a layer]; zeros, because the
    # torch reference's padded attention reads unwritten slots (masked out, but 0 * NaN is NaN).
    storage: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (K, V) views into storage
    num_blocks: int
    block_size: int

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size


def bytes_per_block(args: ModelArgs, block_size: int, dtype: torch.dtype) -> int:
    element_size = torch.empty((), dtype=dtype).element_size()
    return 2 * args.n_layers * block_size * args.n_kv_heads * args.head_dim * element_size


def blocks_for_budget(
    args: ModelArgs,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    budget_bytes: int | None,
    draft_args: ModelArgs | None = None,
) -> int:
    """How many blocks fit in `budget_bytes`, or in the default budget for `device`; with
    `draft_args`, each block is the model's and the draft model's (worker/draft_model.py)."""
    per_block = bytes_per_block(args, block_size, dtype)
    if draft_args is not None:
        per_block += bytes_per_block(draft_args, block_size, dtype)
    if budget_bytes is None:
        if device.type == "cuda":
            # What the allocator caches but no tensor holds (the unfused projections dropped
            # at load, a 7B model's ~9 GB) is free for the cache: hand it back first.
            torch.cuda.empty_cache()
            free_bytes, _ = torch.cuda.mem_get_info(device)
            budget_bytes = int(free_bytes * CUDA_FREE_MEMORY_FRACTION)
        else:
            blocks_per_seq = -(-args.max_seq_len // block_size)
            budget_bytes = min(
                CPU_DEFAULT_BUDGET,
                CPU_DEFAULT_MAX_SEQS * blocks_per_seq * per_block,
                int(_physical_memory_bytes() * CPU_MAX_MEMORY_FRACTION),
            )
    num_blocks = budget_bytes // per_block
    if num_blocks < 1:
        raise ValueError(
            f"a KV cache budget of {budget_bytes} bytes holds no block of {per_block} bytes"
        )
    return num_blocks


def allocate_kv_cache(
    args: ModelArgs,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    backend: AttentionBackend,
) -> KVCache:
    """Zeroed K and V for every layer, in the layout the attention backend reads."""
    k_shape, v_shape = backend.kv_cache_shapes(
        num_blocks, block_size, args.n_kv_heads, args.head_dim
    )
    per_layer = math.prod(k_shape) + math.prod(v_shape)
    if device.type == "cpu":
        flat = zeros_on_huge_pages((args.n_layers * per_layer,), dtype)
    else:
        flat = torch.zeros(args.n_layers * per_layer, dtype=dtype, device=device)
    storage = flat.view(args.n_layers, per_layer)
    split = math.prod(k_shape)
    layers = [(row[:split].view(k_shape), row[split:].view(v_shape)) for row in storage]
    return KVCache(storage=storage, layers=layers, num_blocks=num_blocks, block_size=block_size)


def _physical_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
