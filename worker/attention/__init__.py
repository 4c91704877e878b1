"""Paged attention over the block KV cache, behind one call and several backends.

The model calls `paged_attention(q, k, v, k_cache, v_cache, meta)` once per layer; it writes
this step's K/V into their cache slots and attends, through the backend that built `meta`:

- `torch`: the plain-torch reference (gathers blocks, pads decodes); the oracle in tests.
- `cpu`: a C++ kernel that reads the blocks where they lie (worker/attention/cpu_backend.py),
  built once on first use (worker/cpu_kernels.py); without a compiler, `auto` falls back to
  `torch` with a warning.
- `triton`: Triton kernels for CUDA (worker/attention/triton_backend.py), one launch per layer
  for the whole mixed batch, decode contexts split across SMs when the batch is small; on the
  CPU only under Triton's interpreter (TRITON_INTERPRET=1).

`auto` picks the fastest backend the device has: `cpu` on the CPU, `triton` on CUDA (the
torch reference, with a warning, where triton is not installed).

- metadata.py        what every backend is told about a step (block tables, lengths, slots)
- backend.py         the backend protocol: its KV cache layout, per-step prepare, forward
- torch_backend.py   the plain-torch reference
- cpu_backend.py     the C++ kernel: every sequence of the step in one call per layer
- triton_backend.py, triton_kernels.py  the Triton kernels: one launch per layer, split-KV
"""

from __future__ import annotations

import logging

import torch

from worker.attention.backend import AttentionBackend
from worker.attention.metadata import AttentionMetadata
from worker.attention.torch_backend import TorchAttentionBackend
from worker.config import ATTENTION_BACKENDS

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "AttentionMetadata",
    "create_attention_backend",
    "paged_attention",
]

log = logging.getLogger("loom.attention")


def paged_attention(
    q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    v: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
    meta: AttentionMetadata,
) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
    return meta.backend.forward(q, k, v, k_cache, v_cache, meta)


def create_attention_backend(
    name: str, device: torch.device, block_size: int
) -> AttentionBackend:
    """The backend called `name` for `device` ("auto": the fastest available)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, got {name!r}"
        )
    if name == "triton" or (name == "auto" and device.type == "cuda"):
        return _triton_backend(name, device, block_size)
    if name == "torch" or (name == "auto" and device.type != "cpu"):
        return TorchAttentionBackend(block_size)
    if device.type != "cpu":
        raise ValueError(f"attention_backend 'cpu' runs on the CPU, not on {device}")
    from worker.attention.cpu_backend import CpuAttentionBackend
    from worker.cpu_kernels import load_cpu_kernels

    if load_cpu_kernels():
        return CpuAttentionBackend(block_size)
    if name == "cpu":
        raise RuntimeError("attention_backend 'cpu' needs its C++ kernel, which did not build")
    log.warning("the CPU kernels are unavailable; using the slower torch reference")
    return TorchAttentionBackend(block_size)


def _triton_backend(name: str, device: torch.device, block_size: int) -> AttentionBackend:
    from worker.attention.triton_backend import (
        TritonAttentionBackend,
        interpreting,
        triton_missing,
    )

    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(
            f"attention_backend 'triton' runs on CUDA (or on the CPU under TRITON_INTERPRET=1), "
            f"not on {device}"
        )
    missing = triton_missing()
    if missing is None:
        return TritonAttentionBackend(block_size, device)
    if name == "triton":
        raise RuntimeError(f"attention_backend 'triton' is unavailable: {missing}")
    log.warning("%s; using the slower torch reference on %s", missing, device)
    return TorchAttentionBackend(block_size)
