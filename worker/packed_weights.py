"""Weights kept in GGML's quantized blocks (the GGUF tensor types Q8_0, Q4_0, Q4_1, Q4_K, Q5_K,
Q6_K) instead of being expanded to floats, and the quantizers that make Q8_0 / Q4_0 blocks
(or bfloat16 weights) from a float checkpoint at load.

A PackedTensor is a tensor's raw blocks, [rows, bytes per row] uint8, often a view of the
GGUF file's memory map; Q4_0 and Q4_1 tensors are regrouped at load (`for_kernels`, into
Q4_0_G8 and Q4_1_G8), each eight blocks' scales side by side, so the kernels take them in one
load. The CPU kernels (worker/csrc/quant_matmul_cpu.cpp) multiply by it and read embedding
rows from it directly; `dequantize()` gives the float32 values llama.cpp's reference
dequantizers give (the oracle in tests).

`--quantization` (worker/config.py) chooses: `auto` keeps a GGUF's blocks packed on the CPU,
`none` dequantizes everything (the reference path), `q8_0` / `q4_0` quantize a float
checkpoint's matrices at load, `bf16` rounds them to bfloat16: half the bytes a decode step
reads, multiplied by float32 activations (the float32 model's results with each weight
rounded to 8 significant bits).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from worker.gguf_dequant import BLOCK_SHAPES, dequantize

log = logging.getLogger("loom.worker")

# The kernels' numbering of the types (quant_blocks.h): GGML's blocks, and bfloat16 weights,
# which the kernels take 32 values (64 bytes) at a time and multiply by float32 activations.
KERNEL_TYPE_IDS = {
    "Q8_0": 0, "Q4_0": 1, "Q4_1": 2, "Q4_K": 3, "Q5_K": 4, "Q6_K": 5, "BF16": 6,
    "Q4_0_G8": 7, "Q4_1_G8": 8,
}  # fmt: skip
# The regrouped form of each type that has one (worker/csrc/quant_blocks.h): a row's full
# runs of eight blocks hold their eight float16 scales d (then Q4_1's eight m), then their
# eight blocks' quants; a row's last blocks stay plain.
GROUPED = {"Q4_0": "Q4_0_G8", "Q4_1": "Q4_1_G8"}
PLAIN = {grouped: plain for plain, grouped in GROUPED.items()}
GROUP_BLOCKS = 8
# name -> (values, bytes) per block
PACKED_SHAPES = {
    **BLOCK_SHAPES,
    "BF16": (32, 64),
    **{grouped: BLOCK_SHAPES[plain] for plain, grouped in GROUPED.items()},
}
# What `--quantization` quantizes a float checkpoint to.
LOAD_TIME_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "bf16": "BF16"}


@dataclass(frozen=True)
class PackedTensor:
    data: torch.Tensor  # uint8 [rows, bytes per row]
    type_name: str  # one of KERNEL_TYPE_IDS
    shape: tuple[int, int]  # [rows, row length] of the values it holds

    @property
    def kernel_type(self) -> int:
        return KERNEL_TYPE_IDS[self.type_name]

    @property
    def nbytes(self) -> int:
        return self.data.numel()

    def dequantize(self) -> torch.Tensor:
        """[rows, row length] float32, exactly the reference dequantizer's values."""
        if self.type_name in PLAIN:
            plain = PLAIN[self.type_name]
            return dequantize(ungroup_blocks(self.data, plain), plain, self.shape[1])
        return dequantize(self.data, self.type_name, self.shape[1])


def for_kernels(packed: PackedTensor) -> PackedTensor:
    """The layout the CPU kernels read fastest: Q4_0 and Q4_1 regrouped by eights (new
    memory), the other types as they are."""
    from worker.cpu_kernels import load_cpu_kernels

    if packed.type_name not in GROUPED or not load_cpu_kernels():
        return packed
    grouped = torch.ops.loom.group_blocks(packed.data, KERNEL_TYPE_IDS[packed.type_name])
    return PackedTensor(grouped, GROUPED[packed.type_name], packed.shape)


def ungroup_blocks(data: torch.Tensor, plain: str) -> torch.Tensor:
    """Regrouped blocks [rows, bytes] back into GGML's `plain` type (the oracle's reading, in
    torch ops independent of the kernels')."""
    rows, row_bytes = data.shape
    block_bytes = BLOCK_SHAPES[plain][1]
    head = 4 if plain == "Q4_1" else 2  # d (and m): float16 fields
    full = row_bytes // block_bytes // GROUP_BLOCKS * GROUP_BLOCKS * block_bytes
    groups = data[:, :full].reshape(rows, -1, GROUP_BLOCKS * block_bytes)
    fields = groups[..., : GROUP_BLOCKS * head].reshape(rows, -1, head // 2, GROUP_BLOCKS, 2)
    heads = fields.transpose(-3, -2).reshape(rows, -1, GROUP_BLOCKS, head)
    quants = groups[..., GROUP_BLOCKS * head :].reshape(rows, -1, GROUP_BLOCKS, block_bytes - head)
    plain_blocks = torch.cat((heads, quants), dim=-1).reshape(rows, full)
    return torch.cat((plain_blocks, data[:, full:]), dim=1)


def packed_bytes(type_name: str, shape: tuple[int, int]) -> int:
    values, nbytes = PACKED_SHAPES[type_name]
    return shape[0] * shape[1] // values * nbytes


def keep_packed(quantization: str, device: torch.device) -> bool:
    """Whether quantized weights stay packed: on the CPU, unless `none` asks for floats, and
    only where the kernels build (without a compiler they are dequantized, after the one
    warning load_cpu_kernels gives)."""
    if quantization == "none":
        return False
    if device.type != "cpu":
        if quantization in LOAD_TIME_TYPES:
            raise ValueError(f"--quantization {quantization} runs on the CPU only")
        return False
    from worker.cpu_kernels import load_cpu_kernels

    return load_cpu_kernels()


# ---- quantizing at load, as llama.cpp's reference quantizers do ----------------------------


def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves away from zero (torch.round goes to even)."""
    a = x.abs()
    floored = a.floor()
    return (floored + (2 * (a - floored)).floor()).copysign(x)


def _f16_bytes(d: torch.Tensor) -> torch.Tensor:
    """[n, 1] float32 -> [n, 2] the float16's little-endian bytes."""
    return d.to(torch.float16).view(torch.uint8).reshape(-1, 2)


def quantize_q8_0(values: torch.Tensor) -> torch.Tensor:
    """[rows, K] float -> [rows, K / 32 * 34] Q8_0 blocks."""
    rows, k = values.shape
    blocks = values.float().reshape(-1, 32)
    d = blocks.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(d == 0, 0.0, 1.0 / d)
    q = _round_half_away(blocks * inverse).to(torch.int8).view(torch.uint8)
    return torch.cat((_f16_bytes(d), q), dim=1).reshape(rows, k // 32 * 34)


def quantize_q4_0(values: torch.Tensor) -> torch.Tensor:
    """[rows, K] float -> [rows, K / 32 * 18] Q4_0 blocks (the value of largest magnitude
    maps to -8)."""
    rows, k = values.shape
    blocks = values.float().reshape(-1, 32)
    largest = blocks.gather(-1, blocks.abs().argmax(dim=-1, keepdim=True))
    d = largest / -8
    inverse = torch.where(d == 0, 0.0, 1.0 / d)
    q = (blocks * inverse + 8.5).trunc().clamp(0, 15).to(torch.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    return torch.cat((_f16_bytes(d), packed), dim=1).reshape(rows, k // 32 * 18)


def quantize_bf16(values: torch.Tensor) -> torch.Tensor:
    """[rows, K] float -> [rows, K * 2] bfloat16 bytes (rounded to nearest even)."""
    rows, k = values.shape
    return values.to(torch.bfloat16).contiguous().view(torch.uint8).reshape(rows, k * 2)


_QUANTIZERS = {"Q8_0": quantize_q8_0, "Q4_0": quantize_q4_0, "BF16": quantize_bf16}


def quantize_matrices(
    weights: dict[str, torch.Tensor | PackedTensor], quantization: str
) -> dict[str, torch.Tensor | PackedTensor]:
    """Every float matrix of `weights` whose rows are whole 32-value blocks, quantized to
    `quantization`'s type (q8_0, q4_0 or bf16); norms and packed tensors stay as they are. A
    tensor shared under two names (a tied LM head) is quantized once."""
    type_name = LOAD_TIME_TYPES[quantization]
    done: dict[int, PackedTensor] = {}
    out: dict[str, torch.Tensor | PackedTensor] = {}
    for name, weight in weights.items():
        if isinstance(weight, PackedTensor) or weight.dim() != 2 or weight.shape[1] % 32:
            out[name] = weight
            continue
        key = id(weight)
        if key not in done:
            data = _QUANTIZERS[type_name](weight)
            shape = (weight.shape[0], weight.shape[1])
            done[key] = for_kernels(PackedTensor(data, type_name, shape))
        out[name] = done[key]
    log.info("weights quantized to %s at load", type_name)
    return out
