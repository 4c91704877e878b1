"""The Triton backend: one kernel launch per layer for the whole mixed batch, on CUDA.

Each layer makes two launches: one writes the step's K/V into their slots (skipped when the
model's fused RoPE kernel already wrote them, worker/fused_ops.py), one attends for every
sequence (worker/attention/triton_kernels.py). Neither depends on host copies of the lengths,
so a decode step's launches can be captured in a CUDA graph and replayed with new lengths,
block tables and slots (worker/cuda_graphs.py); padding rows of such a batch carry slot -1 and
context length 0 and cost nothing.

Decode-only steps whose sequences x KV heads would leave SMs idle split each context into
segments (split-KV, `split_count`): the attention launch grows a split axis, and the last
program of each tile to finish combines the partial results. The split count is a function of
the step's shape only (the number of sequences, and the longest context it may hold), so a
captured graph keeps the one it was captured with while the real lengths, read on the device,
change under it.

On a host without a GPU it runs under Triton's interpreter (TRITON_INTERPRET=1), which is how
CI checks it against the torch reference.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from worker.attention.metadata import AttentionMetadata

CPU = torch.device("cpu")
LOG2_E = 1.4426950408889634
# tl.dot needs each dimension of its operands to be at least 16.
MIN_DOT_DIM = 16
TILE_N = 32  # keys per inner iteration
# Query rows (tokens x heads of a group) per program, at most. A tile's registers hold q and
# the float32 accumulator ([rows, head_dim] each), the K and V tiles ([TILE_N, head_dim] each),
# the scores and the 64-bit addresses of the gathered K/V rows; at head_dim 128 a float32 tile
# of 64 rows needs about twice what a 16-bit one does, past 255 registers per thread at 4
# warps. So float32 tiles stop at 32 rows, and tiles of 32 rows or more (and every float32
# tile) run 8 warps, which halves each thread's share. tests/worker/test_triton_attention.py
# compiles every shape for sm_90 and asserts ptxas spilled nothing.
MAX_BLOCK_M = {torch.float32: 32}
DEFAULT_MAX_BLOCK_M = 64
# Split-KV: aim for this many programs per SM (one 4-warp program per SM cannot keep enough
# reads in flight to stream HBM), in at most MAX_SPLITS segments of at least MIN_SPLIT_KEYS.
PROGRAMS_PER_SM = 2
MAX_SPLITS = 16
MIN_SPLIT_KEYS = 256


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
def launch_shape(
    max_query_len: int, group: int, head_dim: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[int, int, int, int]:
    """(GROUP_PAD, BLOCK_Q, HEAD_DIM_PAD, num_warps): a tile holds BLOCK_Q tokens x GROUP_PAD
    heads, as many as a step's longest chunk fills, between 16 and the dtype's most rows."""
    group_pad = _next_power_of_2(group)
    most = MAX_BLOCK_M.get(dtype, DEFAULT_MAX_BLOCK_M)
    rows = min(max(_next_power_of_2(max_query_len * group_pad), MIN_DOT_DIM), most)
    block_q = max(rows // group_pad, 1)
    num_warps = 8 if rows >= 32 or dtype == torch.float32 else 4
    return group_pad, block_q, max(_next_power_of_2(head_dim), MIN_DOT_DIM), num_warps


@functools.lru_cache(maxsize=1024)
def split_count(num_programs: int, max_seq_len: int, num_sms: int) -> int:
    """NUM_SPLITS for a decode-only step of `num_programs` (sequences x KV heads) whose
    contexts hold at most `max_seq_len` keys: 1 when they already fill the SMs, else a power
    of two bringing them near PROGRAMS_PER_SM per SM, each segment at least MIN_SPLIT_KEYS."""
    most = min(PROGRAMS_PER_SM * num_sms // max(num_programs, 1), MAX_SPLITS,
               max_seq_len // MIN_SPLIT_KEYS)  # fmt: skip
    return 1 << (max(most, 1).bit_length() - 1)


def streaming_multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device; 1 elsewhere (the interpreter runs one program at a time)."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


class TritonAttentionBackend:
    name = "triton"
    # Its launches read every length from device tensors: decode steps can replay a graph.
    supports_cuda_graphs = True

    def __init__(
        self,
        block_size: int,
        device: torch.device = CPU,
        num_splits: int | None = None,
    ) -> None:
        """`num_splits`: split every decode-only step this many ways (a power of two; 1: never
        split) instead of choosing by `split_count`; for tests and the device check."""
        from worker.attention import triton_kernels  # the one import of triton

        if num_splits is not None and (num_splits < 1 or num_splits & (num_splits - 1)):
            raise ValueError(f"num_splits must be a power of two, got {num_splits}")
        self._kernels = triton_kernels
        self.block_size = block_size
        self.device = device
        self.num_splits = num_splits
        self._num_sms: int | None = None
        self._counter_buffers: list[torch.Tensor] = []

    @property
    def num_sms(self) -> int:
        if self._num_sms is None:  # asked when first needed: making the backend needs no GPU
            self._num_sms = streaming_multiprocessors(self.device)
        return self._num_sms

    @num_sms.setter
    def num_sms(self, value: int) -> None:
        self._num_sms = value

    def splits_for(self, meta: AttentionMetadata, n_kv_heads: int) -> int:
        """NUM_SPLITS of this step: only decode-only steps split (a prefill chunk brings its
        own programs, and its partial sums would be large)."""
        if meta.max_query_len != 1:
            return 1
        if self.num_splits is not None:
            return self.num_splits
        return split_count(meta.num_seqs * n_kv_heads, meta.max_seq_len, self.num_sms)

    @staticmethod
    def kv_cache_shapes(
        num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        # A key's head_dim values are contiguous: a tile of keys is TILE_N coalesced rows.
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        return shape, shape

    def prepare(self, meta: AttentionMetadata) -> None:
        pass  # the kernels read the shared metadata as it is

    def reachable_splits(self, n_kv_heads: int, max_seq_len: int) -> list[int]:
        """Every NUM_SPLITS a step may launch with: the most, at batch 1 and full length, and
        each power of two below it (a shorter context allows fewer)."""
        most = self.num_splits or split_count(n_kv_heads, max_seq_len, self.num_sms)
        return [1 << i for i in range(most.bit_length())]

    def forward(
        self,
        q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
        k: torch.Tensor | None,  # [num_tokens, n_kv_heads, head_dim]; None: already stored
        v: torch.Tensor | None,  # [num_tokens, n_kv_heads, head_dim]
        k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
        for name, x in (("q", q), ("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
            if x is not None and x.stride(-1) != 1:
                raise ValueError(f"{name} must have contiguous head_dim values")
        if k is not None and v is not None:
            self._store(k, v, k_cache, v_cache, meta.slot_mapping)
        num_tokens, n_heads, head_dim = q.shape
        n_kv_heads = k_cache.shape[2]
        group_pad, block_q, head_dim_pad, num_warps = launch_shape(
            meta.max_query_len, n_heads // n_kv_heads, head_dim, q.dtype
        )
        num_splits = self.splits_for(meta, n_kv_heads)
        out = torch.empty((num_tokens, n_heads, head_dim), dtype=q.dtype, device=q.device)
        grid = (num_tokens // block_q + meta.num_seqs, n_kv_heads, num_splits)
        if num_splits == 1:
            part_acc = part_max = part_sum = counters = out  # not read
        else:
            part_acc = torch.empty((num_tokens, n_heads, num_splits, head_dim),
                                   dtype=torch.float32, device=q.device)  # fmt: skip
            part_max, part_sum = torch.empty(
                (2, num_tokens, n_heads, num_splits), dtype=torch.float32, device=q.device
            )
            counters = self._counters(grid[0] * grid[1], q.device)
        self._kernels.paged_attention_kernel[grid](
            out,
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            part_acc,
            part_max,
            part_sum,
            counters,
            head_dim**-0.5 * LOG2_E,
            meta.num_seqs,
            q.stride(0),
            q.stride(1),
            out.stride(0),
            out.stride(1),
            *k_cache.stride()[:3],
            *v_cache.stride()[:3],
            meta.block_tables.stride(0),
            n_heads * num_splits,
            GROUP=n_heads // n_kv_heads,
            GROUP_PAD=group_pad,
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            BLOCK_SIZE=self.block_size,
            BLOCK_Q=block_q,
            TILE_N=TILE_N,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            NUM_SPLITS=num_splits,
            num_warps=num_warps,
        )
        # [num_tokens, n_heads, head_dim] -> [num_tokens, n_heads * head_dim]
        return out.view(num_tokens, n_heads * head_dim)

    def _counters(self, needed: int, device: torch.device) -> torch.Tensor:
        """Zeroed int32 arrival counters, one per (tile, KV head); each launch leaves them at
        zero. A buffer outgrown is kept, never freed: captured graphs still point into it.
        Graphs are captured after a run of the same shape, so capturing never grows it."""
        if not self._counter_buffers or self._counter_buffers[-1].numel() < needed:
            size = max(needed, 2 * self._counter_buffers[-1].numel() if self._counter_buffers
                       else 1024)  # fmt: skip
            self._counter_buffers.append(torch.zeros(size, dtype=torch.int32, device=device))
        return self._counter_buffers[-1]

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
            num_warps=store_warps(n_kv_heads, head_dim),
        )


def store_warps(n_kv_heads: int, head_dim: int) -> int:
    """Warps for store_kv_kernel's [KV heads, head_dim] tile: 8 from 4,096 values (32 heads of
    128), where ptxas spilled at 4 warps."""
    return 8 if _next_power_of_2(n_kv_heads) * _next_power_of_2(head_dim) >= 4096 else 4
