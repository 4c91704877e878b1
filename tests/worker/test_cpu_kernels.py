"""The fused elementwise CPU kernels equal the torch composites they replace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worker.cpu_kernels import load_cpu_kernels

pytestmark = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler here")


@pytest.mark.parametrize("rows", [1, 7, 300])
def test_add_rms_norm_adds_in_place_then_normalises(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x, delta = torch.randn(rows, 96, generator=gen), torch.randn(rows, 96, generator=gen)
    weight = torch.rand(96, generator=gen) + 0.5
    residual = x.clone()
    normed = torch.ops.loom.add_rms_norm(residual, delta, weight, 1e-5)
    assert torch.equal(residual, x + delta)
    expected = (x + delta) * torch.rsqrt((x + delta).pow(2).mean(-1, keepdim=True) + 1e-5)
    torch.testing.assert_close(normed, expected * weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        torch.ops.loom.rms_norm(x, weight, 1e-5), F.rms_norm(x, (96,), weight, 1e-5)
    )


def test_norms_read_strided_rows() -> None:
    base = torch.randn(5, 200)
    x = base[:, :64]  # rows 200 apart
    weight = torch.ones(64)
    torch.testing.assert_close(
        torch.ops.loom.rms_norm(x, weight, 1e-6), F.rms_norm(x, (64,), weight, 1e-6)
    )


def test_silu_and_mul_over_gate_then_up() -> None:
    # Large magnitudes too: SiLU saturates to 0 and to x without overflow.
    x = torch.cat([torch.randn(40, 64) * 4, torch.full((1, 64), -200.0), torch.full((1, 64), 90.0)])
    x = torch.cat([x, torch.randn(42, 64)], dim=1)  # [gate | up]
    expected = F.silu(x[:, :64]) * x[:, 64:]
    torch.testing.assert_close(torch.ops.loom.silu_and_mul(x), expected, rtol=1e-5, atol=1e-6)


def test_wrong_inputs_are_refused_with_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.loom.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), 1e-5)
    with pytest.raises(RuntimeError, match="weight must be float32"):
        torch.ops.loom.rms_norm(torch.randn(2, 8), torch.ones(9), 1e-5)
    with pytest.raises(RuntimeError, match="2 \\* hidden"):
        torch.ops.loom.silu_and_mul(torch.randn(2, 7))


def test_rope_rotates_query_and_key_pairs_in_place_as_complex_numbers() -> None:
    from worker.model import apply_rope, rope_table

    table = rope_table(64, 40, 10000.0)
    positions = torch.tensor([0, 3, 39, 7, 12])
    freqs = table.index_select(0, positions).unsqueeze(1)  # [T, 1, 32] complex
    qkv = torch.randn(5, 9, 64)
    expected = apply_rope(qkv[:, :6], freqs)
    untouched = qkv[:, 6:].clone()
    torch.ops.loom.rope_(qkv[:, :6], torch.view_as_real(freqs).view(5, 32, 2))
    torch.testing.assert_close(qkv[:, :6], expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(qkv[:, 6:], untouched)  # the heads after the view are left alone
