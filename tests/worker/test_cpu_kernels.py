"""The fused elementwise CPU kernels and the greedy pick equal the torch composites they replace."""

from __future__ import annotations

import math

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


@pytest.mark.parametrize("rows", [1, 3, 40])  # 40 rows of 49,152: split over the threads
def test_greedy_rows_take_each_rows_first_maximum_and_flag_non_finite_rows(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    wide = torch.randn(rows, 50_000, generator=gen)
    logits = wide[:, :49_152]  # rows 50,000 apart, as an index_select's are not
    logits[0, 30_000] = logits[0, 20] = 50.0  # a tie: the first one is the token
    tokens, finite = torch.ops.loom.greedy_rows(logits)
    assert tokens[0].item() == 20
    assert torch.equal(tokens, logits.max(dim=-1).indices)
    assert finite.all()
    for row, bad in zip(range(rows), [math.nan, math.inf, -math.inf], strict=False):
        logits[row, 9] = bad
    _, finite = torch.ops.loom.greedy_rows(logits)
    assert torch.equal(finite, torch.isfinite(logits.sum(dim=-1)))
    assert finite.tolist() == [False] * min(rows, 3) + [True] * (rows - 3)


def test_greedy_rows_refuse_what_they_cannot_read() -> None:
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.loom.greedy_rows(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.loom.greedy_rows(torch.randn(8, 2).t())
