"""What an attention backend provides (the torch reference, the CPU kernel, ...)."""

from __future__ import annotations

from typing import Protocol

import torch

from worker.attention.metadata import AttentionMetadata

Shape = tuple[int, ...]


class AttentionBackend(Protocol):
    """A backend may also set `supports_cuda_graphs = True`: its launches read every length
    from device tensors, so a decode step can be captured once and replayed (cuda_graphs.py)."""

    name: str

    def kv_cache_shapes(
        self, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int
    ) -> tuple[Shape, Shape]:
        """The layouts of one layer's K and V cache that this backend reads."""

    def prepare(self, meta: AttentionMetadata) -> None:
        """Once per step, before the layers: derive what this backend needs (meta.extra)."""

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
        k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
        v: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
        """Write k and v into their cache slots, then attend."""
