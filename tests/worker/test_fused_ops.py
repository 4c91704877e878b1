"""Each fused Triton kernel equals the torch composition it replaces (worker/model.py's
unfused path), under Triton's CPU interpreter: in float32 up to reassociation, in float16 up to
a unit in the last place (both round where torch rounds)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worker.attention.triton_backend import triton_missing
from worker.model import RMSNorm, apply_rope, rope_table

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

# Not bfloat16: the interpreter truncates float32 -> bfloat16 where the GPU rounds to nearest
# (numpy has no bfloat16); the device check compares bfloat16 on the GPU.
DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module")
def ops():
    from worker.fused_ops import FusedOps

    return FusedOps()


def assert_matches(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype == torch.float32:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    else:  # one unit in the last place: float16's eps, 2**-10, relative
        ulp = torch.finfo(expected.dtype).eps
        torch.testing.assert_close(got, expected, rtol=ulp, atol=torch.finfo(expected.dtype).tiny)


def torch_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """RMSNorm.add on the unfused path: returns (new residual, normed)."""
    norm = RMSNorm(x.shape[1], eps)
    norm.weight = torch.nn.Parameter(weight, requires_grad=False)
    x = x.clone()
    return x, norm.add(x, delta)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim", [64, 96])  # a power of two and not
@pytest.mark.parametrize("with_delta", [True, False], ids=["add-norm", "norm"])
def test_add_rms_norm_equals_the_torch_composition(ops, dtype, dim, with_delta) -> None:
    gen = torch.Generator().manual_seed(dim)
    x = torch.randn(5, dim, generator=gen).to(dtype)
    delta = torch.randn(5, dim, generator=gen).to(dtype) if with_delta else None
    weight = (1 + 0.1 * torch.randn(dim, generator=gen)).to(dtype)
    expected_x, expected = torch_norm(x, delta, weight, 1e-5)
    got_x = x.clone()
    got = ops.add_rms_norm(got_x, delta, weight, 1e-5)
    assert_matches(got, expected)
    assert_matches(got_x, expected_x)  # the residual stream, updated in place
    if with_delta:
        assert not torch.equal(got_x, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("n_heads", "n_kv_heads", "head_dim"), [(4, 2, 16), (3, 3, 32), (6, 1, 8)])
def test_rope_and_kv_write_equal_the_torch_composition(ops, dtype, n_heads, n_kv_heads,
                                                       head_dim) -> None:  # fmt: skip
    gen = torch.Generator().manual_seed(n_heads * head_dim)
    num_tokens, num_blocks, block_size = 6, 4, 4
    qkv = torch.randn(num_tokens, n_heads + 2 * n_kv_heads, head_dim, generator=gen).to(dtype)
    positions = torch.tensor([0, 7, 3, 1000, 2047, 5])
    freqs = rope_table(head_dim, 2048, 10000.0).index_select(0, positions).unsqueeze(1)
    slots = torch.tensor([5, -1, 0, 15, 9, -1])  # -1: padding rows, written nowhere
    cache = torch.randn(2, num_blocks, block_size, n_kv_heads, head_dim, generator=gen).to(dtype)

    # The unfused path: rotate Q and K, then the backend's index_copy into the slots.
    expected_qk = apply_rope(qkv[:, : n_heads + n_kv_heads], freqs)
    expected_cache = cache.clone()
    written = slots >= 0
    for layer, part in ((0, expected_qk[:, n_heads:]), (1, qkv[:, n_heads + n_kv_heads :])):
        flat = expected_cache[layer].view(-1, n_kv_heads, head_dim)
        flat.index_copy_(0, slots[written], part[written])

    got_qkv, got_cache = qkv.clone(), cache.clone()
    q = ops.rope_and_store(got_qkv, freqs, n_heads, got_cache[0], got_cache[1], slots)
    assert_matches(q, expected_qk[:, :n_heads])
    assert q.data_ptr() == got_qkv.data_ptr()  # a view of the projection, rotated in place
    assert_matches(got_qkv[:, : n_heads + n_kv_heads], expected_qk)
    assert torch.equal(got_qkv[:, n_heads + n_kv_heads :], qkv[:, n_heads + n_kv_heads :])
    assert_matches(got_cache, expected_cache)  # every other slot untouched


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [40, 2500])  # one program per token, and three
def test_silu_mul_equals_the_torch_composition(ops, dtype, hidden) -> None:
    gen = torch.Generator().manual_seed(hidden)
    gate_up = (3 * torch.randn(4, 2 * hidden, generator=gen)).to(dtype)
    gate, up = gate_up.clone().split(hidden, dim=-1)
    expected = F.silu(gate, inplace=True).mul_(up)  # FeedForward's unfused path
    assert_matches(ops.silu_and_mul(gate_up), expected)
