"""The Triton backend: one kernel launch per layer for the whole mixed batch, on CUDA.

Each layer makes two launches: one writes the step's K/V into their slots, one attends for
every sequence (worker/attention/triton_kernels.py). Neither depends on host copies of the
lengths, so a decode step's launches can be captured in a CUDA graph and replayed with new
lengths, block tables and slots (worker/cuda_graphs.py); padding rows of such a batch carry
slot -1 and context length 0 and cost nothing.

On a host without a GPU it runs under Triton's interpreter (TRITON_INTERPRET=1), which is how
CI checks it against the torch reference.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from worker.attention.metadata import AttentionMetadata

LOG2_E = 1.4426950408889634
# tl.dot needs each dimension of its operands to be at least 16.
MIN_DOT_DIM = 16
TILE_N = 32  # keys per inner iteration
MAX_BLOCK_M = 64  # query rows (tokens x heads of a group) per program


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (read when the kernels are made)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_missing() -> str | None:
    """Why the Triton backend cannot be made here, or None when it can. Asking does not
    import triton: whether it interprets is fixed when it is first imported."""
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed"
    return None


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.lru_cache(maxsize=64)
def launch_shape(max_query_len: int, group: int, head_dim: int) -> tuple[int, int, int]:
    """(GROUP_PAD, BLOCK_Q, HEAD_DIM_PAD): a tile holds BLOCK_Q tokens x GROUP_PAD heads,
    as many as a step's longest chunk fills, between 16 and MAX_BLOCK_M rows."""
    group_pad = _next_power_of_2(group)
    rows = min(max(_next_power_of_2(max_query_len * group_pad), MIN_DOT_DIM), MAX_BLOCK_M)
    block_q = max(rows // group_pad, 1)
    return group_pad, block_q, max(_next_power_of_2(head_dim), MIN_DOT_DIM)


class TritonAttentionBackend:
    name = "triton"
    # Its launches read every length from device tensors: decode steps can replay a graph.
    supports_cuda_graphs = True

    def __init__(self, block_size: int) -> None:
        from worker.attention import triton_kernels  # the one import of triton

        self._kernels = triton_kernels
        self.block_size = block_size

    @staticmethod
    def kv_cache_shapes(
        num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        # A key's head_dim values are contiguous: a tile of keys is TILE_N coalesced rows.
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        return shape, shape

    def prepare(self, meta: AttentionMetadata) -> None:
        pass  # the kernels read the shared metadata as it is

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
        for name, x in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
            if x.stride(-1) != 1:
                raise ValueError(f"{name} must have contiguous head_dim values")
        num_tokens, n_heads, head_dim = q.shape
        n_kv_heads = k.shape[1]
        self._store(k, v, k_cache, v_cache, meta.slot_mapping)
        group_pad, block_q, head_dim_pad = launch_shape(
            meta.max_query_len, n_heads // n_kv_heads, head_dim
        )
        out = torch.empty((num_tokens, n_heads, head_dim), dtype=q.dtype, device=q.device)
        grid = (num_tokens // block_q + meta.num_seqs, n_kv_heads)
        self._kernels.paged_attention_kernel[grid](
            out,
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            head_dim**-0.5 * LOG2_E,
            meta.num_seqs,
            q.stride(0),
            q.stride(1),
            out.stride(0),
            out.stride(1),
            *k_cache.stride()[:3],
            *v_cache.stride()[:3],
            meta.block_tables.stride(0),
            GROUP=n_heads // n_kv_heads,
            GROUP_PAD=group_pad,
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            BLOCK_SIZE=self.block_size,
            BLOCK_Q=block_q,
            TILE_N=TILE_N,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        )
        # [num_tokens, n_heads, head_dim] -> [num_tokens, n_heads * head_dim]
        return out.view(num_tokens, n_heads * head_dim)

    def _store(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [num_tokens]; -1: padding, written nowhere
    ) -> None:
        num_tokens, n_kv_heads, head_dim = k.shape
        self._kernels.store_kv_kernel[(num_tokens,)](
            k,
            v,
            k_cache,
            v_cache,
            slot_mapping,
            k.stride(0),
            k.stride(1),
            v.stride(0),
            v.stride(1),
            *k_cache.stride()[:3],
            *v_cache.stride()[:3],
            NUM_KV_HEADS=n_kv_heads,
            KV_HEADS_PAD=_next_power_of_2(n_kv_heads),
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=_next_power_of_2(head_dim),
            BLOCK_SIZE=self.block_size,
        )
