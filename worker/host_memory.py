"""Host memory the kernel may back with 2 MiB pages.

A decode step streams the weights and reads KV blocks all over the cache: with 4 KiB pages
nearly every page crossed costs a TLB miss and a page walk. Anonymous memory with
MADV_HUGEPAGE is backed by 2 MiB pages where the kernel's transparent huge pages allow it
(`always` or `madvise`), and by ordinary pages otherwise. Pages are zero-filled as they are
first touched, so what is never written costs no RAM.
"""

from __future__ import annotations

import math
import mmap

import torch


def zeros_on_huge_pages(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zeroed contiguous CPU tensor of `shape` on memory that asks for huge pages (it holds
    the map: the memory goes when the tensor does)."""
    numel = math.prod(shape)
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    buffer = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return torch.frombuffer(buffer, dtype=dtype, count=numel).view(shape)
