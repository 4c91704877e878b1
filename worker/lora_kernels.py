"""Triton kernels of the batched LoRA path (imported only by worker/lora_triton.py, which
launches them).

Every token row carries the slot of its adapter in the stacked buffers of
worker/lora_slots.py (-1: the base model alone). A projection's output is cut into slices
(wqkv: q, k, v; w13: gate, up), each with its own A and B per slot:

    u[t, s, :]            = x[t] @ A[slot_t, s, :rank].T               (shrink)
    out[t, slice s cols] += u[t, s, :] @ B[slot_t, slice s cols, :rank].T  (expand)

A program covers BLOCK_M consecutive rows. The worker orders a step's rows by adapter, so a
tile holds one slot or a few: the program loops over the slots its rows hold, and for each
multiplies only that slot's rows (the others masked to zero), so every row gets its own
adapter's product and tiles of one adapter run as plain dense tiles (the segmented form);
a tile with no adapted row exits at once. Ranks come from the device (per slot), so one
launch (and one captured graph) serves any mix of adapters.

The shrink splits its reduction over in_features into SPLIT_K parts, each written to its own
plane of `u` (a decode has few rows: without the split a handful of programs would stream all
of A); the expand sums the planes as it loads them, always in the same order, so results do
not depend on timing. Products accumulate in float32; `u` rounds to the adapter's dtype
before the expand, as the torch path's shrink does.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _slot_range(slots_ptr, rows, num_tokens, NUM_SLOTS: tl.constexpr):
    """The rows' slots (-1 outside the batch) and the lowest and highest slot among them."""
    row_slots = tl.load(slots_ptr + rows, mask=rows < num_tokens, other=-1).to(tl.int32)
    lowest = tl.min(tl.where(row_slots >= 0, row_slots, NUM_SLOTS), axis=0)
    # 64-bit bounds: the loop's slot then scales strides without overflow.
    return row_slots, lowest.to(tl.int64), tl.max(row_slots, axis=0).to(tl.int64)


# The row count (and the stride of u's planes, which grows with it) must not pick a variant:
# Triton would compile one for 1 row and one per multiple of 16 rows otherwise.
@triton.jit(do_not_specialize=["num_tokens", "u_stride_split"])
def lora_shrink_kernel(
    x_ptr,  # [num_tokens, IN_FEATURES], rows contiguous
    a_ptr,  # [NUM_SLOTS, num_slices, max_rank, IN_FEATURES]
    slots_ptr,  # [num_tokens]: each row's slot, -1 for none
    ranks_ptr,  # [NUM_SLOTS] int32: each slot's rank in this projection (0: not adapted)
    u_ptr,  # [SPLIT_K, num_tokens, num_slices, max_rank] float32
    num_tokens,
    x_stride,
    a_stride_slot,
    a_stride_slice,
    a_stride_rank,
    u_stride_split,
    u_stride_token,
    u_stride_slice,
    IN_FEATURES: tl.constexpr,
    MAX_RANK: tl.constexpr,
    NUM_SLOTS: tl.constexpr,
    NUM_R_BLOCKS: tl.constexpr,  # grid axis 2 is SPLIT_K x NUM_R_BLOCKS
    K_PER_SPLIT: tl.constexpr,  # a multiple of BLOCK_K
    BLOCK_M: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" for float32, else "tf32" (unused by 16-bit dots)
):
    pid_m, slice_index = tl.program_id(0), tl.program_id(1)
    split, r_block = tl.program_id(2) // NUM_R_BLOCKS, tl.program_id(2) % NUM_R_BLOCKS
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_slots, lowest, highest = _slot_range(slots_ptr, rows, num_tokens, NUM_SLOTS)
    if highest < 0:
        return  # no adapted row: the expand reads nothing of this tile
    ranks = r_block * BLOCK_R + tl.arange(0, BLOCK_R)
    k_first = split * K_PER_SPLIT
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for slot in range(lowest, highest + 1):
        mine = row_slots == slot
        rank = tl.load(ranks_ptr + slot)
        if (tl.sum(mine.to(tl.int32), axis=0) > 0) & (r_block * BLOCK_R < rank):
            a_base = a_ptr + slot * a_stride_slot + slice_index * a_stride_slice
            for k0 in range(k_first, k_first + K_PER_SPLIT, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_valid = ks < IN_FEATURES
                x = tl.load(x_ptr + rows[:, None].to(tl.int64) * x_stride + ks[None, :],
                            mask=mine[:, None] & k_valid[None, :], other=0.0)  # fmt: skip
                # [BLOCK_R, BLOCK_K] as A lies (in_features contiguous), used transposed
                a = tl.load(a_base + ranks[:, None] * a_stride_rank + ks[None, :],
                            mask=(ranks[:, None] < rank) & k_valid[None, :], other=0.0)  # fmt: skip
                acc += tl.dot(x, tl.trans(a), input_precision=PRECISION)
    u = u_ptr + split * u_stride_split + rows[:, None].to(tl.int64) * u_stride_token
    tl.store(u + slice_index * u_stride_slice + ranks[None, :], acc,
             mask=(row_slots >= 0)[:, None] & (ranks[None, :] < MAX_RANK))  # fmt: skip


@triton.jit(do_not_specialize=["num_tokens", "u_stride_split"])
def lora_expand_kernel(
    u_ptr,  # [SPLIT_K, num_tokens, num_slices, max_rank] float32: the shrink's planes
    b_ptr,  # [NUM_SLOTS, out_features, max_rank]: slice s owns rows bounds[s]:bounds[s + 1]
    slots_ptr,  # [num_tokens]
    ranks_ptr,  # [NUM_SLOTS] int32
    bounds_ptr,  # [num_slices + 1] int32
    out_ptr,  # [num_tokens, out_features], rows contiguous: out += the adapters' terms
    num_tokens,
    u_stride_split,
    u_stride_token,
    u_stride_slice,
    b_stride_slot,
    b_stride_row,
    out_stride,
    NUM_SLOTS: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m, pid_n, slice_index = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    col_start = tl.load(bounds_ptr + slice_index)
    col_end = tl.load(bounds_ptr + slice_index + 1)
    if col_start + pid_n * BLOCK_N >= col_end:
        return  # past this slice's columns (the grid fits the widest slice)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_slots, lowest, highest = _slot_range(slots_ptr, rows, num_tokens, NUM_SLOTS)
    if highest < 0:
        return
    cols = col_start + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_valid = cols < col_end
    u_rows = u_ptr + rows[:, None].to(tl.int64) * u_stride_token + slice_index * u_stride_slice
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for slot in range(lowest, highest + 1):
        mine = row_slots == slot
        rank = tl.load(ranks_ptr + slot)
        if tl.sum(mine.to(tl.int32), axis=0) > 0:
            b_base = b_ptr + slot * b_stride_slot + cols[:, None] * b_stride_row
            for r0 in range(0, rank, BLOCK_R):
                ranks = r0 + tl.arange(0, BLOCK_R)
                r_valid = ranks < rank
                u_mask = mine[:, None] & r_valid[None, :]
                u = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
                for split in range(SPLIT_K):
                    u += tl.load(u_rows + split * u_stride_split + ranks[None, :], mask=u_mask,
                                 other=0.0)  # fmt: skip
                # [BLOCK_N, BLOCK_R] as B lies (the rank contiguous), used transposed
                b = tl.load(b_base + ranks[None, :], mask=col_valid[:, None] & r_valid[None, :],
                            other=0.0)  # fmt: skip
                acc += tl.dot(u.to(b.dtype), tl.trans(b), input_precision=PRECISION)
    # Only adapted rows are written: a base-only row keeps its bits.
    mask = (row_slots >= 0)[:, None] & col_valid[None, :]
    out = out_ptr + rows[:, None].to(tl.int64) * out_stride + cols[None, :]
    base = tl.load(out, mask=mask, other=0.0)
    tl.store(out, (base.to(tl.float32) + acc).to(out_ptr.dtype.element_ty), mask=mask)
