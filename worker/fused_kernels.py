"""Triton kernels for the elementwise work of a layer, each one pass where torch takes several
(imported only by worker/fused_ops.py, which launches them).

Each computes in float32 and rounds where the torch composition it replaces rounds, so that in
float32 it equals that composition up to reassociation, and in 16-bit types up to a unit in the
last place:

- `add_rms_norm_kernel`: x += delta (rounded to x's dtype, as torch's in-place add), then
  Meta's RMSNorm of the new x: normalised in float32, rounded, times the weight.
- `rope_store_kernel`: Meta's interleaved RoPE on the Q and K heads of the fused projection, in
  place, and the rotated K and the V of each token written into its cache slot (slot -1: a
  padding row, written nowhere).
- `silu_mul_kernel`: SiLU(gate) * up over the fused gate/up projection.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def add_rms_norm_kernel(
    x_ptr,  # [num_tokens, DIM]: the residual stream, updated in place when HAS_DELTA
    delta_ptr,  # [num_tokens, DIM] (x_ptr when not HAS_DELTA: not read)
    weight_ptr,  # [DIM]
    out_ptr,  # [num_tokens, DIM]
    x_stride,
    delta_stride,
    out_stride,
    eps,
    DIM: tl.constexpr,
    BLOCK: tl.constexpr,  # DIM rounded up to a power of two
    HAS_DELTA: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    valid = cols < DIM
    x = tl.load(x_ptr + token * x_stride + cols, mask=valid, other=0.0)
    if HAS_DELTA:
        delta = tl.load(delta_ptr + token * delta_stride + cols, mask=valid, other=0.0)
        x = (x.to(tl.float32) + delta.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(x_ptr + token * x_stride + cols, x, mask=valid)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / DIM + eps)
    normed = (xf * rstd).to(out_ptr.dtype.element_ty).to(tl.float32)
    weight = tl.load(weight_ptr + cols, mask=valid, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * out_stride + cols, (normed * weight).to(out_ptr.dtype.element_ty),
             mask=valid)  # fmt: skip


@triton.jit
def rope_store_kernel(
    qkv_ptr,  # [num_tokens, N_HEADS + 2 * N_KV_HEADS, HEAD_DIM]: Q, K, V heads; head_dim contiguous
    cos_sin_ptr,  # [num_tokens, HEAD_DIM // 2, 2] float32: cos and sin of each pair's angle
    k_cache_ptr,  # [num_blocks, block_size, n_kv_heads, head_dim], head_dim contiguous
    v_cache_ptr,
    slot_mapping_ptr,  # [num_tokens]; -1: write nothing to the cache
    qkv_stride_token,
    qkv_stride_head,
    cos_sin_stride_token,
    kc_stride_block,
    kc_stride_row,
    kc_stride_head,
    vc_stride_block,
    vc_stride_row,
    vc_stride_head,
    N_HEADS: tl.constexpr,
    N_KV_HEADS: tl.constexpr,
    ROTATED_PAD: tl.constexpr,  # N_HEADS + N_KV_HEADS rounded up to a power of two
    KV_HEADS_PAD: tl.constexpr,
    HALF: tl.constexpr,  # HEAD_DIM // 2 pairs
    HALF_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    block = slot // BLOCK_SIZE
    row = slot % BLOCK_SIZE
    heads = tl.arange(0, ROTATED_PAD)  # the Q heads, then the K heads
    pairs = tl.arange(0, HALF_PAD)
    pair_valid = pairs < HALF
    mask = (heads[:, None] < N_HEADS + N_KV_HEADS) & pair_valid[None, :]
    rows = qkv_ptr + token * qkv_stride_token + heads[:, None] * qkv_stride_head
    even = rows + 2 * pairs[None, :]
    x0 = tl.load(even, mask=mask, other=0.0).to(tl.float32)
    x1 = tl.load(even + 1, mask=mask, other=0.0).to(tl.float32)
    angle = cos_sin_ptr + token * cos_sin_stride_token + 2 * pairs
    cos = tl.load(angle, mask=pair_valid, other=0.0)[None, :]
    sin = tl.load(angle + 1, mask=pair_valid, other=0.0)[None, :]
    # (x0 + i x1) (cos + i sin), rounded to the projection's dtype as torch's .type_as does
    y0 = (x0 * cos - x1 * sin).to(qkv_ptr.dtype.element_ty)
    y1 = (x0 * sin + x1 * cos).to(qkv_ptr.dtype.element_ty)
    tl.store(even, y0, mask=mask)
    tl.store(even + 1, y1, mask=mask)
    # The K heads' rows of the tile go to the cache: K head j is row N_HEADS + j.
    kv_head = heads - N_HEADS
    k_mask = mask & (kv_head[:, None] >= 0) & (slot >= 0)
    k_dst = k_cache_ptr + block * kc_stride_block + row * kc_stride_row
    k_dst += kv_head[:, None] * kc_stride_head + 2 * pairs[None, :]
    tl.store(k_dst, y0, mask=k_mask)
    tl.store(k_dst + 1, y1, mask=k_mask)
    # V goes as it is.
    v_heads = tl.arange(0, KV_HEADS_PAD)
    dims = tl.arange(0, 2 * HALF_PAD)
    v_mask = (v_heads[:, None] < N_KV_HEADS) & (dims[None, :] < 2 * HALF) & (slot >= 0)
    v_src = qkv_ptr + token * qkv_stride_token + (N_HEADS + N_KV_HEADS) * qkv_stride_head
    v = tl.load(v_src + v_heads[:, None] * qkv_stride_head + dims[None, :], mask=v_mask)
    v_dst = v_cache_ptr + block * vc_stride_block + row * vc_stride_row
    tl.store(v_dst + v_heads[:, None] * vc_stride_head + dims[None, :], v, mask=v_mask)


@triton.jit
def silu_mul_kernel(
    gate_up_ptr,  # [num_tokens, 2 * HIDDEN]: gate, then up
    out_ptr,  # [num_tokens, HIDDEN]
    in_stride,
    out_stride,
    HIDDEN: tl.constexpr,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    valid = cols < HIDDEN
    gate = tl.load(gate_up_ptr + token * in_stride + cols, mask=valid, other=0.0).to(tl.float32)
    up = tl.load(gate_up_ptr + token * in_stride + HIDDEN + cols, mask=valid, other=0.0)
    # F.silu rounds to the dtype, then the product rounds again.
    silu = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + token * out_stride + cols,
             (silu * up.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=valid)  # fmt: skip
