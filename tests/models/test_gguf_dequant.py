"""Loom's dequantizers give, bit for bit, what the gguf package's own give, on random blocks
of every type Loom reads (the K types included, which the gguf package cannot quantize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from worker.gguf_dequant import BLOCK_SHAPES, dequantize

# Where each block type keeps its float16 scales: byte offsets within a block.
F16_FIELDS = {
    "Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}  # fmt: skip


def random_blocks(type_name: str, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """[rows, bytes per row] of random quants with finite, varied float16 scales."""
    rng = np.random.default_rng(seed)
    nbytes = BLOCK_SHAPES[type_name][1]
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, nbytes), dtype=np.uint8)
    for offset in F16_FIELDS[type_name]:
        scales = rng.uniform(-0.05, 0.05, size=rows * blocks_per_row).astype(np.float16)
        raw[:, offset : offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, blocks_per_row * nbytes)


@pytest.mark.parametrize("type_name", sorted(BLOCK_SHAPES))
def test_random_blocks_dequantize_as_the_gguf_package_does(type_name: str) -> None:
    values_per_block = BLOCK_SHAPES[type_name][0]
    raw = random_blocks(type_name, rows=24, blocks_per_row=3, seed=len(type_name))
    ours = dequantize(torch.from_numpy(raw), type_name, row_length=3 * values_per_block)
    theirs = torch.from_numpy(quants.dequantize(raw, Q[type_name]))
    assert ours.shape == (24, 3 * values_per_block) == theirs.shape
    assert ours.dtype == torch.float32
    assert torch.equal(ours, theirs)
    assert ours.abs().max() > 0  # the check saw real values, not all zeros


@pytest.mark.parametrize("type_name", ["Q8_0", "Q4_0", "Q4_1"])
def test_quantized_then_dequantized_values_stay_close(type_name: str) -> None:
    values = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    raw = quants.quantize(values, Q[type_name])
    ours = dequantize(torch.from_numpy(raw), type_name, row_length=256)
    step = 2 * np.abs(values).max() / (255 if type_name == "Q8_0" else 15)
    assert (ours - torch.from_numpy(values)).abs().max() <= step


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16"])
def test_float_tensors_are_taken_as_they_are(type_name: str) -> None:
    values = torch.randn(8, 64)
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[type_name]
    stored = values.to(dtype)
    raw = stored.contiguous().view(torch.uint8).reshape(8, -1)
    assert torch.equal(dequantize(raw, type_name, row_length=64), stored.float())
