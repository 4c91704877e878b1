"""The CPU backend: a C++ kernel that attends over the block cache in place.

`torch.ops.loom.paged_attention` (worker/csrc/paged_attention_cpu.cpp, built by
worker/cpu_kernels.py) writes the step's K/V into their slots and runs every sequence of the
step, decodes and prefill chunks alike, in one call per layer on torch's intra-op threads.
"""

from __future__ import annotations

import torch

from worker.attention.metadata import AttentionMetadata
from worker.cpu_kernels import load_cpu_kernels


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, block_size: int) -> None:
        if not load_cpu_kernels():
            raise RuntimeError("the CPU attention kernel is not available")
        self.block_size = block_size
        self._op = torch.ops.loom.paged_attention

    @staticmethod
    def kv_cache_shapes(
        num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        # K with one head's keys of a block side by side ([head_dim, block_size]): a query's
        # scores for a block are head_dim vector FMAs. V with one row per token.
        return (
            (num_blocks, n_kv_heads, head_dim, block_size),
            (num_blocks, n_kv_heads, block_size, head_dim),
        )

    def prepare(self, meta: AttentionMetadata) -> None:
        pass  # the kernel plans its work from the shared metadata

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
        v: torch.Tensor,
        k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
        num_tokens, n_heads, head_dim = q.shape
        out = torch.empty((num_tokens, n_heads, head_dim), dtype=q.dtype, device=q.device)
        self._op(
            out,
            q,
            k,
            v,
            k_cache,
            v_cache,
            meta.slot_mapping,
            meta.block_tables,
            meta.query_start_loc,
            meta.seq_lens,
            head_dim**-0.5,
        )
        # [num_tokens, n_heads, head_dim] -> [num_tokens, n_heads * head_dim]
        return out.view(num_tokens, n_heads * head_dim)
