"""The CPU backend: a C++ kernel that attends over the block cache in place.

The kernel (csrc/paged_attention_cpu.cpp) is compiled on first use with
torch.utils.cpp_extension for this machine's CPU and cached (TORCH_EXTENSIONS_DIR, by default
~/.cache/torch_extensions), so later starts load it in milliseconds. It registers
`torch.ops.loom.paged_attention`, which writes the step's K/V into their slots and runs every
sequence of the step, decodes and prefill chunks alike, in one call per layer on torch's
intra-op threads.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

import torch

from worker.attention.metadata import AttentionMetadata

log = logging.getLogger("loom.attention")

SOURCE = Path(__file__).resolve().parent / "csrc" / "paged_attention_cpu.cpp"
# Built for this CPU (-march=native), so the cached build is keyed by what the CPU offers.
CFLAGS = [
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",  # gcc keeps to 256-bit vectors on AVX-512 CPUs otherwise
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
]
# torch runs its intra-op threads on OpenMP: the kernel uses the same runtime (the libgomp
# torch already loaded), so both share one pool.
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet


def _cpu_signature() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return hashlib.sha256(flags.encode()).hexdigest()[:12]


def load_cpu_kernel() -> bool:
    """Build (once per machine) and load the kernel; False, with a warning saying why, when it
    cannot be built here (no compiler, for one). Safe to call from several threads."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _build_and_load()
        return _loaded


def _build_and_load() -> bool:
    from torch.utils import cpp_extension

    name = f"loom_cpu_attention_{_cpu_signature()}"
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    library = build_dir / f"{name}.so"
    started = time.monotonic()
    if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
        log.info("building the CPU attention kernel (once; cached in %s)", build_dir)
    try:
        cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, a failed build: the caller falls back
        reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        log.warning("cannot build the CPU attention kernel: %s", reason[0])
        return False
    log.info("CPU attention kernel ready in %.1f s", time.monotonic() - started)
    return True


class CpuAttentionBackend:
    name = "cpu"

    def __init__(self, block_size: int) -> None:
        if not load_cpu_kernel():
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
