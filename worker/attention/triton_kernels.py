"""The Triton kernels of the `triton` backend (imported only when that backend is made).

`store_kv_kernel` writes each token's K and V into its cache slot (slot -1: a padding row of a
captured decode batch, written nowhere). `paged_attention_kernel` attends for every sequence
of a step in one launch: decodes and prefill chunks after any cached prefix alike.

The grid of the attention kernel is (query tiles, KV heads). A tile is up to BLOCK_Q
consecutive query tokens of one sequence times the GROUP query heads that share a KV head, so
each K/V tile loaded serves all of them. Sequence s owns the tiles starting at
query_start_loc[s] // BLOCK_Q + s; that bound makes num_tokens // BLOCK_Q + num_seqs tiles
enough for any mix, computable without looking at the lengths, so the launch is the same for
every step of a captured graph. Tiles past a sequence's queries exit at once.

Keys are read TILE_N at a time straight from the blocks: key j of a sequence lives at block
block_table[j // BLOCK_SIZE], row j % BLOCK_SIZE. Softmax runs online in float32 (base 2:
the scale is pre-multiplied by log2 e), whatever the input dtype.

Split-KV: with NUM_SPLITS > 1 the grid gains a third axis, and program (tile, head, split)
reads only its split's share of the tile's keys: the key tiles cut into NUM_SPLITS runs of
equal length, from the sequence's own length on the device, so one launch (one captured graph)
serves every length. Each writes its unnormalised sum, running max and running sum per row,
then counts itself in on the (tile, head)'s counter; the last to arrive rescales every split's
partials to a common max, divides once, writes the output and sets the counter back to 0 for
the next launch. So a split step is still one launch per layer. The counter's atomic add is a
release (after a barrier: every thread's partials first) and an acquire for the reader, whose
loads skip L1 (other SMs wrote them). A split that holds no key writes max -inf and sum 0,
and weighs nothing.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_kv_kernel(
    k_ptr,  # [num_tokens, n_kv_heads, head_dim], head_dim contiguous
    v_ptr,
    k_cache_ptr,  # [num_blocks, block_size, n_kv_heads, head_dim], head_dim contiguous
    v_cache_ptr,
    slot_mapping_ptr,  # [num_tokens]; -1: write nothing
    k_stride_token,
    k_stride_head,
    v_stride_token,
    v_stride_head,
    kc_stride_block,
    kc_stride_row,
    kc_stride_head,
    vc_stride_block,
    vc_stride_row,
    vc_stride_head,
    NUM_KV_HEADS: tl.constexpr,
    KV_HEADS_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    if slot < 0:
        return
    block = slot // BLOCK_SIZE
    row = slot % BLOCK_SIZE
    heads = tl.arange(0, KV_HEADS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    mask = (heads[:, None] < NUM_KV_HEADS) & (dims[None, :] < HEAD_DIM)
    k = tl.load(
        k_ptr + token * k_stride_token + heads[:, None] * k_stride_head + dims[None, :], mask=mask
    )
    v = tl.load(
        v_ptr + token * v_stride_token + heads[:, None] * v_stride_head + dims[None, :], mask=mask
    )
    k_dst = k_cache_ptr + block * kc_stride_block + row * kc_stride_row
    v_dst = v_cache_ptr + block * vc_stride_block + row * vc_stride_row
    tl.store(k_dst + heads[:, None] * kc_stride_head + dims[None, :], k, mask=mask)
    tl.store(v_dst + heads[:, None] * vc_stride_head + dims[None, :], v, mask=mask)


@triton.jit
def _sequence_of_tile(query_start_loc_ptr, num_seqs, tile, BLOCK_Q: tl.constexpr):
    """The last sequence s whose first tile, query_start_loc[s] // BLOCK_Q + s, is <= tile."""
    lo: tl.int32 = 0
    hi = num_seqs
    while hi - lo > 1:  # the answer lies in [lo, hi)
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if first_tile <= tile:
            lo = mid
        else:
            hi = mid
    return lo


# Values that change from step to step stay runtime values even when they are 1 or a multiple
# of 16 (Triton would otherwise compile a variant for each): a step reuses what warm-up built.
@triton.jit(do_not_specialize=["num_seqs", "block_table_stride"])
def paged_attention_kernel(
    out_ptr,  # [num_tokens, n_heads, head_dim]
    q_ptr,  # [num_tokens, n_heads, head_dim], head_dim contiguous
    k_cache_ptr,  # [num_blocks, block_size, n_kv_heads, head_dim]
    v_cache_ptr,
    block_tables_ptr,  # [num_seqs, max_blocks] int32
    seq_lens_ptr,  # [num_seqs] int32: context length including this step's tokens
    query_start_loc_ptr,  # [num_seqs + 1] int32
    part_acc_ptr,  # NUM_SPLITS > 1: [num_tokens, n_heads, NUM_SPLITS, HEAD_DIM] float32
    part_max_ptr,  # NUM_SPLITS > 1: [num_tokens, n_heads, NUM_SPLITS] float32
    part_sum_ptr,  # NUM_SPLITS > 1: [num_tokens, n_heads, NUM_SPLITS] float32
    counters_ptr,  # NUM_SPLITS > 1: [>= programs on axes 0 x 1] int32, zero between launches
    scale_log2,  # head_dim ** -0.5 * log2(e)
    num_seqs,
    q_stride_token,
    q_stride_head,
    out_stride_token,
    out_stride_head,
    kc_stride_block,
    kc_stride_row,
    kc_stride_head,
    vc_stride_block,
    vc_stride_row,
    vc_stride_head,
    block_table_stride,
    part_stride_token,  # n_heads * NUM_SPLITS
    GROUP: tl.constexpr,  # query heads per KV head
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,  # query tokens per tile; BLOCK_Q * GROUP_PAD rows
    TILE_N: tl.constexpr,  # keys per inner iteration
    PRECISION: tl.constexpr,  # "ieee" for float32 (no TF32 rounding), "tf32" otherwise
    NUM_SPLITS: tl.constexpr,  # 1: write the output; else partials, the last split reduces
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = _sequence_of_tile(query_start_loc_ptr, num_seqs, tile, BLOCK_Q)
    seq_start = tl.load(query_start_loc_ptr + seq)
    query_len = tl.load(query_start_loc_ptr + seq + 1) - seq_start
    first_query = (tile - (seq_start // BLOCK_Q + seq)) * BLOCK_Q
    if first_query >= query_len:
        return
    seq_len = tl.load(seq_lens_ptr + seq)
    num_cached = seq_len - query_len

    BLOCK_M: tl.constexpr = BLOCK_Q * GROUP_PAD
    rows = tl.arange(0, BLOCK_M)
    query = first_query + rows // GROUP_PAD  # index of the row's token within its sequence
    head = kv_head * GROUP + rows % GROUP_PAD
    row_valid = (query < query_len) & (rows % GROUP_PAD < GROUP)
    token = (seq_start + query).to(tl.int64)
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM
    q_mask = row_valid[:, None] & dim_valid[None, :]
    q = tl.load(
        q_ptr + token[:, None] * q_stride_token + head[:, None] * q_stride_head + dims[None, :],
        mask=q_mask,
        other=0.0,
    )  # [BLOCK_M, HEAD_DIM_PAD]
    # Query i of the chunk sits at position num_cached + i and sees keys 0 ..= that position.
    position = num_cached + query

    running_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    running_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    # The tile's last query sees keys up to its own position, no further.
    num_keys = tl.minimum(seq_len, num_cached + first_query + BLOCK_Q)
    if NUM_SPLITS == 1:
        key_lo = 0
        key_hi = num_keys
    else:  # this split's run of whole key tiles (the last run may be short or empty)
        keys_per_split = tl.cdiv(tl.cdiv(num_keys, TILE_N), NUM_SPLITS) * TILE_N
        key_lo = tl.program_id(2) * keys_per_split
        key_hi = tl.minimum(num_keys, key_lo + keys_per_split)
    block_table = block_tables_ptr + seq.to(tl.int64) * block_table_stride
    for key_start in range(key_lo, key_hi, TILE_N):
        keys = key_start + tl.arange(0, TILE_N)
        key_valid = keys < num_keys
        block = tl.load(block_table + keys // BLOCK_SIZE, mask=key_valid, other=0).to(tl.int64)
        row_in_block = keys % BLOCK_SIZE
        k_rows = block * kc_stride_block + row_in_block * kc_stride_row + kv_head * kc_stride_head
        v_rows = block * vc_stride_block + row_in_block * vc_stride_row + kv_head * vc_stride_head
        k_t = tl.load(
            k_cache_ptr + k_rows[None, :] + dims[:, None],
            mask=dim_valid[:, None] & key_valid[None, :],
            other=0.0,
        )  # [HEAD_DIM_PAD, TILE_N]
        v = tl.load(
            v_cache_ptr + v_rows[:, None] + dims[None, :],
            mask=key_valid[:, None] & dim_valid[None, :],
            other=0.0,
        )  # [TILE_N, HEAD_DIM_PAD]
        scores = tl.dot(q, k_t, input_precision=PRECISION) * scale_log2  # [BLOCK_M, TILE_N]
        visible = (keys[None, :] <= position[:, None]) & key_valid[None, :]
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # A row that has seen no key yet (padding rows) keeps a finite reference point.
        safe_max = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp2(scores - safe_max[:, None])
        rescale = tl.exp2(running_max - safe_max)
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        running_max = new_max

    if NUM_SPLITS == 1:
        out = acc / tl.where(running_sum == 0.0, 1.0, running_sum)[:, None]
        tl.store(
            out_ptr + token[:, None] * out_stride_token + head[:, None] * out_stride_head
            + dims[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=q_mask,
        )  # fmt: skip
    else:
        part = token * part_stride_token + head * NUM_SPLITS  # [BLOCK_M]: split 0's entry
        split = tl.program_id(2)
        tl.store(part_max_ptr + part + split, running_max, mask=row_valid)
        tl.store(part_sum_ptr + part + split, running_sum, mask=row_valid)
        tl.store(part_acc_ptr + (part + split)[:, None] * HEAD_DIM + dims[None, :], acc,
                 mask=q_mask)  # fmt: skip
        tl.debug_barrier()  # every thread's partials are written before the count
        counter = counters_ptr + tile * tl.num_programs(1) + kv_head
        if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == NUM_SPLITS - 1:
            _reduce_splits(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, part, token,
                           head, row_valid, dims, q_mask, out_stride_token, out_stride_head,
                           NUM_SPLITS, HEAD_DIM)  # fmt: skip
            tl.store(counter, 0)


@triton.jit
def _reduce_splits(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, part, token, head,
                   row_valid, dims, q_mask, out_stride_token, out_stride_head,
                   NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr):  # fmt: skip
    """The tile's rows: every split's partial sums on a common max, divided once."""
    top = tl.full(part.shape, float("-inf"), tl.float32)
    for split in range(NUM_SPLITS):
        split_max = tl.load(part_max_ptr + part + split, mask=row_valid, other=float("-inf"),
                            cache_modifier=".cg")  # fmt: skip
        top = tl.maximum(top, split_max)
    top = tl.where(top == float("-inf"), 0.0, top)  # a row that saw no key at all: zeros
    total = tl.zeros(part.shape, tl.float32)
    out = tl.zeros(q_mask.shape, tl.float32)
    for split in range(NUM_SPLITS):
        # A split with no key: max -inf, weight exp2(-inf) = 0.
        weight = tl.exp2(tl.load(part_max_ptr + part + split, mask=row_valid,
                                 other=float("-inf"), cache_modifier=".cg") - top)  # fmt: skip
        split_sum = tl.load(part_sum_ptr + part + split, mask=row_valid, other=0.0,
                            cache_modifier=".cg")  # fmt: skip
        split_acc = tl.load(part_acc_ptr + (part + split)[:, None] * HEAD_DIM + dims[None, :],
                            mask=q_mask, other=0.0, cache_modifier=".cg")  # fmt: skip
        total += weight * split_sum
        out += weight[:, None] * split_acc
    out = out / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(
        out_ptr + token[:, None] * out_stride_token + head[:, None] * out_stride_head
        + dims[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=q_mask,
    )  # fmt: skip
