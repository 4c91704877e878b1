"""Fewer launches per layer where the `triton` attention backend runs (CUDA; the CPU only under
Triton's interpreter): the Triton kernels of worker/fused_kernels.py in place of the torch
compositions around the GEMMs.

A decode layer is then its four GEMMs plus five other kernels, split-KV or not (the last split
of a tile reduces inside the attention launch): residual add + RMSNorm, RoPE + K/V write,
attention, residual add + RMSNorm, SiLU * up. `install_fused_ops(model)` hands the ops to the
model's norms, attention and feed-forward modules (worker/model.py reads `fused_ops` there,
beside its C++ CPU `kernels` path); the attention backend is then called without K and V,
which this pass already wrote into the cache.
"""

from __future__ import annotations

import torch
from torch import nn

SILU_BLOCK = 1024  # hidden units per program: several programs per token even at batch 1


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


class FusedOps:
    """Launches of the fused kernels. Every argument they take that changes from step to step
    is a grid size, so a step never needs a variant that warm-up did not build."""

    def __init__(self) -> None:
        from worker import fused_kernels  # imports triton

        self._kernels = fused_kernels

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return self._norm(x, None, weight, eps)

    def add_rms_norm(
        self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float
    ) -> torch.Tensor:
        """x += delta (in place), then the norm of x."""
        return self._norm(x, delta, weight, eps)

    def _norm(self, x, delta, weight, eps) -> torch.Tensor:
        num_tokens, dim = x.shape
        if x.stride(1) != 1 or (delta is not None and delta.stride(1) != 1):
            raise ValueError("the residual stream and its update must have contiguous rows")
        out = torch.empty_like(x)
        source = x if delta is None else delta
        block = _next_power_of_2(dim)
        self._kernels.add_rms_norm_kernel[(num_tokens,)](
            x, source, weight, out, x.stride(0), source.stride(0), out.stride(0), eps,
            DIM=dim, BLOCK=block, HAS_DELTA=delta is not None, num_warps=row_warps(block),
        )  # fmt: skip
        return out

    def rope_and_store(
        self,
        qkv: torch.Tensor,  # [num_tokens, n_heads + 2 * n_kv_heads, head_dim]
        freqs: torch.Tensor,  # [num_tokens, 1, head_dim // 2] complex64
        n_heads: int,
        k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # [num_tokens] int64; -1: not written
    ) -> torch.Tensor:  # q: [num_tokens, n_heads, head_dim], rotated, a view of qkv
        """Rotate Q and K in place and write K and V into their cache slots."""
        num_tokens, heads, head_dim = qkv.shape
        n_kv_heads = (heads - n_heads) // 2
        if qkv.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
            raise ValueError("qkv and the caches must have contiguous head_dim values")
        # [T, 1, head_dim / 2] complex64 -> [T, head_dim / 2, 2] float32: cos, sin
        cos_sin = torch.view_as_real(freqs).view(num_tokens, head_dim // 2, 2)
        half = head_dim // 2
        self._kernels.rope_store_kernel[(num_tokens,)](
            qkv, cos_sin, k_cache, v_cache, slot_mapping, qkv.stride(0), qkv.stride(1),
            cos_sin.stride(0), *k_cache.stride()[:3], *v_cache.stride()[:3],
            N_HEADS=n_heads, N_KV_HEADS=n_kv_heads,
            ROTATED_PAD=_next_power_of_2(n_heads + n_kv_heads),
            KV_HEADS_PAD=_next_power_of_2(n_kv_heads), HALF=half,
            HALF_PAD=_next_power_of_2(half), BLOCK_SIZE=k_cache.shape[1],
        )  # fmt: skip
        return qkv[:, :n_heads]

    def silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[T, 2 * hidden] (gate, then up) -> SiLU(gate) * up, [T, hidden]."""
        num_tokens, width = gate_up.shape
        hidden = width // 2
        if gate_up.stride(1) != 1:
            raise ValueError("gate_up must have contiguous rows")
        out = torch.empty((num_tokens, hidden), dtype=gate_up.dtype, device=gate_up.device)
        block = min(SILU_BLOCK, _next_power_of_2(hidden))
        grid = (num_tokens, -(-hidden // block))
        self._kernels.silu_mul_kernel[grid](
            gate_up, out, gate_up.stride(0), out.stride(0), HIDDEN=hidden, BLOCK=block
        )
        return out


def row_warps(block: int) -> int:
    """Warps for a program over one row of `block` values: 4 up to 2,048, then 8, then 16."""
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def install_fused_ops(model: nn.Module) -> FusedOps:
    """Hand the ops to every module of `model` that reads `fused_ops` (worker/model.py)."""
    ops = FusedOps()
    for module in model.modules():
        if hasattr(type(module), "fused_ops"):
            module.fused_ops = ops
    return ops
