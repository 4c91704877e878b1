"""The packed-weight CPU kernels against references, for every block type (and bfloat16
weights, `--quantization bf16`) and every shape class: decode rows (1-32) and prefill rows
(33-512) on the float-activation path (the default), the int16 and the int8 paths, longer
prefills (dequantize + GEMM, above 512 rows; called directly here), ragged row counts and
output sizes, one block per row and several. Q4_0 and Q4_1 regrouped by eights at load
(Q4_0_G8, Q4_1_G8) are tested as types of their own, against their plain blocks' values.

References: the gguf package's own dequantizer gives the weights; the integer paths'
references multiply them, in float64, by the activations quantized per 32 values as the
kernels define it (round to nearest, scale max|x| / 127 or / 32767), so only float32
summation order separates the two; the other paths multiply the float activations
themselves.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from tests.models.test_gguf_dequant import random_blocks
from worker.cpu_kernels import load_cpu_kernels
from worker.gguf_dequant import BLOCK_SHAPES
from worker.packed_modules import ACTIVATION_CODES
from worker.packed_weights import (
    GROUPED,
    KERNEL_TYPE_IDS,
    PACKED_SHAPES,
    PLAIN,
    quantize_bf16,
    ungroup_blocks,
)

pytestmark = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler here")

# GGML's blocks and the regrouped forms (by eights); bfloat16 weights have their own test.
TYPES = [*sorted(BLOCK_SHAPES), *sorted(PLAIN)]
EPS32 = float(np.finfo(np.float32).eps)
INT8, INT16 = ACTIVATION_CODES["int8"], ACTIVATION_CODES["int16"]


def packed(type_name: str, rows: int, blocks: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blocks [rows, bytes] and the gguf package's float64 values of them (a regrouped
    type: of the plain blocks it was regrouped from)."""
    plain = PLAIN.get(type_name, type_name)
    raw = random_blocks(plain, rows, blocks, seed)
    values = quants.dequantize(raw, Q[plain]).astype(np.float64)
    data = torch.from_numpy(raw)
    if type_name in PLAIN:
        data = torch.ops.loom.group_blocks(data, KERNEL_TYPE_IDS[plain])
    return data, torch.from_numpy(values)


def quantize_activations(x: torch.Tensor, levels: int = 127) -> torch.Tensor:
    """x as the int8 path sees it: per 32 values, round(x / d) * d with d = max|x| / 127
    (`levels` 32767: the int16 path)."""
    blocks = x.reshape(x.shape[0], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / levels
    q = torch.round(blocks * torch.where(d > 0, 1 / d, 0.0))
    return (q.double() * d.double()).reshape(x.shape)


def assert_product_close(y: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> None:
    """y = x @ w^T up to float32 rounding of a K-term sum (a bound on any summation order)."""
    expected = x @ w.T
    bound = 4 * w.shape[1] * EPS32 * (x.abs() @ w.abs().T) + 1e-30
    excess = ((y.double() - expected).abs() / bound).max().item()
    assert excess <= 1.0, f"error {excess:.2f}x the float32 summation bound"


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 32, 33, 130])
def test_int8_path_for_decode_and_prefill_rows(type_name: str, rows: int) -> None:
    per_block = PACKED_SHAPES[type_name][0]
    # One block per row, a ragged odd count, eight blocks at a time and one more.
    for blocks, out in ((1, 5), (3, 37), (9, 3)):
        w_raw, w = packed(type_name, out, blocks, seed=rows + blocks)
        x = torch.randn(rows, blocks * per_block, generator=torch.Generator().manual_seed(rows))
        kind = KERNEL_TYPE_IDS[type_name]
        y = torch.ops.loom.quant_linear(x, w_raw, kind, blocks * per_block, INT8)
        assert y.shape == (rows, out)
        assert_product_close(y, w, quantize_activations(x))
        assert torch.equal(y, torch.ops.loom.quant_linear_int8(x, w_raw, kind, blocks * per_block))


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 16, 33, 130])
def test_int16_path_for_decode_and_prefill_rows(type_name: str, rows: int) -> None:
    per_block = PACKED_SHAPES[type_name][0]
    for blocks, out in ((1, 5), (3, 37), (9, 3)):  # 9 blocks: eight at a time, then one
        w_raw, w = packed(type_name, out, blocks, seed=rows + blocks)
        k = blocks * per_block
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows))
        kind = KERNEL_TYPE_IDS[type_name]
        y = torch.ops.loom.quant_linear(x, w_raw, kind, k, INT16)
        assert y.shape == (rows, out)
        assert_product_close(y, w, quantize_activations(x, 32767))
        assert torch.equal(y, torch.ops.loom.quant_linear_int16(x, w_raw, kind, k))


@pytest.mark.parametrize("type_name", TYPES)
def test_int16_products_follow_float_ones_far_closer_than_int8(type_name: str) -> None:
    # What `--activations int16` buys over int8, in one number each.
    per_block = PACKED_SHAPES[type_name][0]
    k = per_block * (2 if per_block == 256 else 18)
    w_raw, w = packed(type_name, 64, k // per_block, seed=7)
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(7))
    exact = x.double() @ w.T
    kind = KERNEL_TYPE_IDS[type_name]
    error16 = (torch.ops.loom.quant_linear(x, w_raw, kind, k, INT16).double() - exact).abs()
    error8 = (torch.ops.loom.quant_linear(x, w_raw, kind, k, INT8).double() - exact).abs()
    assert error16.max() * 30 < error8.max()


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 4, 7, 32, 33, 130])
def test_float_path_for_decode_and_prefill_rows(type_name: str, rows: int) -> None:
    per_block = PACKED_SHAPES[type_name][0]
    for blocks, out in ((1, 5), (3, 37), (9, 3)):
        w_raw, w = packed(type_name, out, blocks, seed=rows + blocks)
        x = torch.randn(rows, blocks * per_block, generator=torch.Generator().manual_seed(rows))
        kind = KERNEL_TYPE_IDS[type_name]
        y = torch.ops.loom.quant_linear(x, w_raw, kind, blocks * per_block)
        assert y.shape == (rows, out)
        assert_product_close(y, w, x.double())  # no 8-bit rounding of the activations
        direct = torch.ops.loom.quant_linear_f32(x, w_raw, kind, blocks * per_block)
        assert_product_close(direct, w, x.double())
        if rows <= 16:  # above, dequantize + GEMM
            assert torch.equal(y, direct)


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("activations", ["float", "int8", "int16"])
def test_a_row_gives_the_same_result_whatever_rows_share_its_call(type_name, activations) -> None:
    per_block = PACKED_SHAPES[type_name][0]
    w_raw, _ = packed(type_name, 19, 2, seed=4)
    x = torch.randn(7, 2 * per_block, generator=torch.Generator().manual_seed(4))
    kind = KERNEL_TYPE_IDS[type_name]
    code = ACTIVATION_CODES[activations]
    together = torch.ops.loom.quant_linear(x, w_raw, kind, 2 * per_block, code)
    for i in range(7):  # rows in tiles of several and alone
        alone = torch.ops.loom.quant_linear(x[i : i + 1], w_raw, kind, 2 * per_block, code)
        if activations != "float":  # the compiler may contract a tile's products differently
            torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-6)
        else:  # the float kernel sums every row the same way: equal to the bit
            assert torch.equal(alone[0], together[i]), i


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("rows", [1, 33, 130])
def test_dequantize_and_gemm_path_for_long_prefills(type_name: str, rows: int) -> None:
    per_block = PACKED_SHAPES[type_name][0]
    w_raw, w = packed(type_name, 45, 2, seed=rows)
    x = torch.randn(rows, 2 * per_block, generator=torch.Generator().manual_seed(rows))
    kind = KERNEL_TYPE_IDS[type_name]
    y = torch.ops.loom.quant_linear_dequant(x, w_raw, kind, 2 * per_block)
    assert_product_close(y, w, x.double())
    # The float-activation candidate reads the same blocks.
    assert_product_close(
        torch.ops.loom.quant_linear_f32(x, w_raw, kind, 2 * per_block), w, x.double()
    )


@pytest.mark.parametrize("type_name", TYPES)
def test_rows_dequantize_exactly_as_the_reference(type_name: str) -> None:
    per_block = PACKED_SHAPES[type_name][0]
    blocks = 11 if per_block == 32 else 2  # 32-value blocks: eight at a time, then three
    w_raw, w = packed(type_name, 9, blocks, seed=5)
    ids = torch.tensor([8, 0, 3, 3])
    rows = torch.ops.loom.quant_rows(w_raw, ids, KERNEL_TYPE_IDS[type_name], blocks * per_block)
    assert rows.dtype == torch.float32
    assert torch.equal(rows, w[ids].float())


def test_more_than_512_rows_take_the_dequantize_and_gemm_path() -> None:
    w_raw, w = packed("Q4_0", 8, 1, seed=3)
    x = torch.randn(600, 32, generator=torch.Generator().manual_seed(3))
    y = torch.ops.loom.quant_linear(x, w_raw, KERNEL_TYPE_IDS["Q4_0"], 32)
    assert_product_close(y, w, x.double())  # float activations: no 8-bit rounding


def test_strided_input_rows_are_read_in_place() -> None:
    w_raw, w = packed("Q4_1", 16, 2, seed=1)
    base = torch.randn(3, 100)
    x = base[:, 10:74]  # rows 100 apart
    y = torch.ops.loom.quant_linear(x, w_raw, KERNEL_TYPE_IDS["Q4_1"], 64)
    assert_product_close(y, w, x.double())
    y = torch.ops.loom.quant_linear(x, w_raw, KERNEL_TYPE_IDS["Q4_1"], 64, INT8)
    assert_product_close(y, w, quantize_activations(x.contiguous()))
    y = torch.ops.loom.quant_linear(x, w_raw, KERNEL_TYPE_IDS["Q4_1"], 64, INT16)
    assert_product_close(y, w, quantize_activations(x.contiguous(), 32767))


def test_wrong_inputs_are_refused_with_a_clear_error() -> None:
    w_raw, _ = packed("Q8_0", 4, 2, seed=0)
    q8 = KERNEL_TYPE_IDS["Q8_0"]
    with pytest.raises(RuntimeError, match="not whole blocks"):
        torch.ops.loom.quant_linear(torch.randn(1, 48), w_raw, q8, 48)
    with pytest.raises(RuntimeError, match="expected packed weights"):
        torch.ops.loom.quant_linear(torch.randn(1, 96), w_raw, q8, 96)
    with pytest.raises(RuntimeError, match="expected float32 input"):
        torch.ops.loom.quant_linear(torch.randn(1, 64, dtype=torch.float64), w_raw, q8, 64)
    with pytest.raises(RuntimeError, match="outside 0..3"):
        torch.ops.loom.quant_rows(w_raw, torch.tensor([4]), q8, 64)
    with pytest.raises(RuntimeError, match="unknown quantized type"):
        torch.ops.loom.quant_rows(w_raw, torch.tensor([0]), 99, 64)


@pytest.mark.parametrize("rows", [1, 9, 600])
@pytest.mark.parametrize("activations", [0, INT8, INT16])
def test_a_projection_of_several_parts_equals_its_parts_side_by_side(rows, activations) -> None:
    # A Q4_K_M file's fused projection: parts of different types, read where they lie.
    names, sizes = ("Q4_K", "Q6_K", "Q8_0"), (24, 8, 5)
    parts = [packed(name, out, 256 // BLOCK_SHAPES[name][0], seed=out)
             for name, out in zip(names, sizes, strict=True)]  # fmt: skip
    kinds = [KERNEL_TYPE_IDS[name] for name in names]
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(rows))
    y = torch.ops.loom.quant_linear_parts(x, [raw for raw, _ in parts], kinds, 256, activations)
    each = [torch.ops.loom.quant_linear(x, raw, kind, 256, activations)
            for (raw, _), kind in zip(parts, kinds, strict=True)]  # fmt: skip
    assert torch.equal(y, torch.cat(each, dim=1))


@pytest.mark.parametrize("rows", [1, 3, 16, 33, 600])
@pytest.mark.parametrize("activations", ["float", "int8", "int16"])
def test_bfloat16_weights_multiply_float_activations_whatever_is_asked(rows, activations) -> None:
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(37, 96, generator=gen)
    w_raw, bf16 = quantize_bf16(w), KERNEL_TYPE_IDS["BF16"]
    exact = w.bfloat16().double()
    x = torch.randn(rows, 96, generator=gen)
    y = torch.ops.loom.quant_linear(x, w_raw, bf16, 96, ACTIVATION_CODES[activations])
    assert_product_close(y, exact, x.double())  # the activations are not rounded
    ids = torch.tensor([36, 0, 5, 5])
    assert torch.equal(torch.ops.loom.quant_rows(w_raw, ids, bf16, 96), exact[ids].float())
    with pytest.raises(RuntimeError, match="bfloat16 weights take float activations"):
        torch.ops.loom.quant_linear_int8(x, w_raw, bf16, 96)


@pytest.mark.parametrize("plain", sorted(GROUPED))
@pytest.mark.parametrize("blocks", [1, 8, 19])  # no full group; one; two and three plain
def test_blocks_regrouped_by_eights_give_the_same_bytes_back_and_the_same_products(plain, blocks):
    data, _ = packed(plain, 6, blocks, seed=blocks)
    grouped = torch.ops.loom.group_blocks(data, KERNEL_TYPE_IDS[plain])
    assert grouped.shape == data.shape
    assert torch.equal(ungroup_blocks(grouped, plain), data)
    block_bytes = BLOCK_SHAPES[plain][1]
    if blocks >= 8:  # the first group's scales d lead it
        first_scales = data[:, : 8 * block_bytes].reshape(6, 8, block_bytes)[..., :2]
        assert torch.equal(grouped[:, :16].reshape(6, 8, 2), first_scales)
    k = blocks * 32
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(blocks))
    for code in ACTIVATION_CODES.values():  # the same blocks summed in the same order
        for rows in (1, 5):
            together = torch.ops.loom.quant_linear(
                x[:rows], grouped, KERNEL_TYPE_IDS[GROUPED[plain]], k, code
            )
            apart = torch.ops.loom.quant_linear(x[:rows], data, KERNEL_TYPE_IDS[plain], k, code)
            assert torch.equal(together, apart)


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_K"])
def test_only_q4_0_and_q4_1_are_regrouped(type_name) -> None:
    data, _ = packed(type_name, 2, 1, seed=0)
    with pytest.raises(RuntimeError, match="only Q4_0 and Q4_1"):
        torch.ops.loom.group_blocks(data, KERNEL_TYPE_IDS[type_name])
