"""The batched LoRA path in Triton (CUDA; the CPU only under Triton's interpreter): the
kernels of worker/lora_kernels.py over the slot buffers of worker/lora_slots.py, two launches
per projection whatever the step's mix of adapters.

`TritonLoraStep.add` keeps worker/lora_batch.py's LoraStep contract (the model calls it after
each projection), so the model does not know which path runs. Every launch shape depends on
the step's row count and the model's shapes only, and the per-row slots and the ranks are
read on the device: a captured decode graph replays with any adapters in any slots.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.lora_slots import LoraSlots, SlotProjection

MIN_DOT = 16  # tl.dot wants every dimension at least 16
# Tiles sized so that no variant spills registers on sm_90 (tests/worker/hopper_compile.py
# compiles each): 32 in_features per shrink step, 64 output columns per expand program.
BLOCK_K = 32
BLOCK_N = 64
MAX_BLOCK_R = 64
MAX_SPLIT_K = 8
K_PER_PROGRAM = 512  # in_features a shrink program reduces, at least, before splitting stops


def _next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def split_k(in_features: int) -> int:
    """How many planes the shrink's reduction is cut into: a function of the model's shape
    alone, so a request's sums do not depend on what it is batched with."""
    return max(1, min(MAX_SPLIT_K, in_features // K_PER_PROGRAM))


BLOCK_M_HEIGHTS = (16, 64)  # rows per program: the first up to 16 rows, else the second


def block_m(num_tokens: int) -> int:
    return BLOCK_M_HEIGHTS[0] if num_tokens <= BLOCK_M_HEIGHTS[0] else BLOCK_M_HEIGHTS[1]


def lora_warps(rows: int) -> int:
    """Warps per program: 8 for the taller tile, whose operands would spill at 4."""
    return 4 if rows <= BLOCK_M_HEIGHTS[0] else 8


@dataclass(slots=True)
class TritonLoraStep:
    """One step's adapters on the Triton path: `row_slots` [num_tokens] gives each row's
    slot in `slots` (-1: the base model alone)."""

    slots: LoraSlots
    row_slots: torch.Tensor
    splits: int | None = None  # force the shrink's split (tests); None: split_k(in_features)
    # A tensor-parallel rank's all-reduce, for the partial shrinks of wo and w2.
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    def add(self, out: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> None:
        """out += each row's adapter's x A^T B^T, slice by slice, for `projection`."""
        reduce = self.reduce if projection in ("wo", "w2") else None
        lora_add(out, x, self.row_slots, self.slots.layers[layer][projection], self.splits,
                 reduce)  # fmt: skip


def lora_add(
    out: torch.Tensor,  # [num_tokens, out_features], updated in place
    x: torch.Tensor,  # [num_tokens, in_features]
    row_slots: torch.Tensor,  # [num_tokens] int
    projection: SlotProjection,
    splits: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """`reduce`: sums the shrink's planes over tensor-parallel ranks before the expand."""
    from worker import lora_kernels  # imports triton

    if x.stride(1) != 1:
        x = x.contiguous()
    if out.stride(1) != 1:
        raise ValueError("the projection's output must have contiguous rows")
    num_tokens, in_features = x.shape
    num_slots, num_slices, max_rank, _ = projection.a.shape
    splits = splits or split_k(in_features)
    rows = block_m(num_tokens)
    block_r = min(MAX_BLOCK_R, max(MIN_DOT, _next_power_of_2(max_rank)))
    r_blocks = -(-max_rank // block_r)
    k_blocks = -(-in_features // BLOCK_K)
    k_per_split = -(-k_blocks // splits) * BLOCK_K
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    # Rows the shrink skips (no adapter) are never read; summed over ranks, they must be numbers.
    make = torch.empty if reduce is None else torch.zeros
    u = make((splits, num_tokens, num_slices, max_rank), dtype=torch.float32, device=x.device)
    m_blocks = -(-num_tokens // rows)
    a = projection.a
    lora_kernels.lora_shrink_kernel[(m_blocks, num_slices, splits * r_blocks)](
        x, a, row_slots, projection.ranks, u, num_tokens, x.stride(0),
        a.stride(0), a.stride(1), a.stride(2), u.stride(0), u.stride(1), u.stride(2),
        IN_FEATURES=in_features, MAX_RANK=max_rank, NUM_SLOTS=num_slots,
        NUM_R_BLOCKS=r_blocks, K_PER_SPLIT=k_per_split, BLOCK_M=rows, BLOCK_R=block_r,
        BLOCK_K=BLOCK_K, PRECISION=precision, num_warps=lora_warps(rows),
    )  # fmt: skip
    if reduce is not None:
        reduce(u)  # in place
    bounds = projection.bounds_host
    widest = max(end - start for start, end in zip(bounds, bounds[1:], strict=False))
    b = projection.b
    lora_kernels.lora_expand_kernel[(m_blocks, -(-widest // BLOCK_N), num_slices)](
        u, b, row_slots, projection.ranks, projection.bounds, out, num_tokens,
        u.stride(0), u.stride(1), u.stride(2), b.stride(0), b.stride(1), out.stride(0),
        NUM_SLOTS=num_slots, SPLIT_K=splits, BLOCK_M=rows, BLOCK_N=BLOCK_N, BLOCK_R=block_r,
        PRECISION=precision, num_warps=lora_warps(rows),
    )  # fmt: skip


def row_slots_of(
    runs: list[tuple[int, int, int]], slot_of: dict[int, int], num_tokens: int
) -> list[int]:
    """Each row's slot from the step's runs (StepBatch.lora_runs: first row, end row,
    lora_id) and the slot each adapter sits in; -1 for rows on the base model."""
    rows = [-1] * num_tokens
    for start, end, lora_id in runs:
        rows[start:end] = [slot_of[lora_id]] * (end - start)
    return rows
