"""A step's small host lists onto the device, and its results back, without stalling the GPU.

`torch.tensor(values, device="cuda")` copies from pageable memory, which makes the host wait
until everything queued on the stream has run: called after the forward pass is queued, it
throws away the overlap of host and GPU. From pinned memory the copy simply queues behind
that work. On the way back every result of a step comes in one copy, the step's one wait.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values: Sequence | range, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`values` as a tensor on `device`; on CUDA the copy is queued, not waited for."""
    if device.type == "cuda":
        # Pinned blocks come from torch's caching host allocator, which keeps each one until
        # the copy that reads it has run.
        host = torch.tensor(values, dtype=dtype, pin_memory=True)
        return host.to(device, non_blocking=True)
    return torch.tensor(values, dtype=dtype, device=device)


def to_host_lists(*tensors: torch.Tensor) -> list[list]:
    """Each tensor's values as (nested) Python lists, fetched in one device-to-host copy.

    Values travel as float64, exact for float32 values and for integers below 2**53 (token
    ids), and come back in each tensor's own kind.
    """
    if all(t.device.type == "cpu" for t in tensors):
        return [t.tolist() for t in tensors]
    return packed_host_lists(tensors)


def packed_host_lists(tensors: Sequence[torch.Tensor]) -> list[list]:
    """to_host_lists' one copy: the values side by side in one float64 tensor, split again
    on the host."""
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]).cpu()  # the one wait
    lists, start = [], 0
    for t in tensors:
        part = flat[start : start + t.numel()].view(t.shape)
        start += t.numel()
        lists.append(part.to(t.dtype).tolist())
    return lists
