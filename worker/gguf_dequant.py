"""GGML's quantized blocks to float32, in torch, as llama.cpp's reference dequantizers define
them (ggml-quants.c). Each function takes the raw bytes of a tensor, [rows, bytes per row]
uint8, and returns [rows, row length] float32; the products are taken in the reference's
order, so the values are the reference's to the bit.

Block layouts (bytes), per block of 32 values, or per super-block of 256 for the K types:
  Q8_0  d:f16, q:int8[32]                                        34
  Q4_0  d:f16, q:uint8[16] (low nibbles: values 0-15, high: 16-31)  18   x = d * (q - 8)
  Q4_1  d:f16, m:f16, q:uint8[16]                                 20   x = d * q + m
  Q4_K  d:f16, dmin:f16, scales:12 (8 six-bit scale/min pairs), q:uint8[128]   144
  Q5_K  as Q4_K, with qh:uint8[32] (value bit 4, sub-block j in bit j) before q   176
  Q6_K  ql:uint8[128], qh:uint8[64], scales:int8[16], d:f16       210
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# name -> (values per block, bytes per block)
BLOCK_SHAPES = {
    "Q8_0": (32, 34),
    "Q4_0": (32, 18),
    "Q4_1": (32, 20),
    "Q4_K": (256, 144),
    "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """[..., 2] little-endian bytes -> [..., 1] float32."""
    return raw.contiguous().view(torch.float16).float()


def _nibbles(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (q & 0x0F), (q >> 4)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    q = blocks[:, 2:].contiguous().view(torch.int8).float()
    return q * d


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d = _f16(blocks[:, :2])
    low, high = _nibbles(blocks[:, 2:])
    q = torch.cat((low, high), dim=1).to(torch.int8) - 8
    return d * q.float()


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    low, high = _nibbles(blocks[:, 4:])
    return d * torch.cat((low, high), dim=1).float() + m


def _k4_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> 8 six-bit scales and 8 six-bit mins (get_scale_min_k4). Sub-blocks 0-3
    keep theirs in the low six bits of bytes 0-3 (scales) and 4-7 (mins); sub-blocks 4-7 take
    the low / high nibble of bytes 8-11 plus the top two bits of bytes 0-3 / 4-7."""
    s = scales.to(torch.int32)
    head_sc, head_m, tail = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat((head_sc & 63, (tail & 0x0F) | ((head_sc >> 6) << 4)), dim=1)
    m = torch.cat((head_m & 63, (tail >> 4) | ((head_m >> 6) << 4)), dim=1)
    return sc.float(), m.float()


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k4_scales(blocks[:, 4:16])
    # 128 bytes = 4 chunks of 32; a chunk's low nibbles are sub-block 2c, its high ones 2c+1.
    q = blocks[:, 16:].reshape(n, 4, 32)
    low, high = _nibbles(q)
    q = torch.stack((low, high), dim=2).reshape(n, 8, 32).float()  # [n, sub-block, 32]
    scale = (d * sc).unsqueeze(-1)  # [n, 8, 1]
    offset = (dmin * m).unsqueeze(-1)
    return (scale * q - offset).reshape(n, 256)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
    sc, m = _k4_scales(blocks[:, 4:16])
    qh = blocks[:, 16:48].to(torch.int32).reshape(n, 1, 32)
    low, high = _nibbles(blocks[:, 48:].reshape(n, 4, 32))
    q = torch.stack((low, high), dim=2).reshape(n, 8, 32).to(torch.int32)
    fifth = (qh >> torch.arange(8, dtype=torch.int32).view(1, 8, 1)) & 1  # [n, sub-block, 32]
    q = (q | (fifth << 4)).float()
    scale = (d * sc).unsqueeze(-1)  # [n, 8, 1]
    offset = (dmin * m).unsqueeze(-1)
    return (scale * q - offset).reshape(n, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql = blocks[:, :128].reshape(n, 2, 2, 32)  # [n, half, low/high 32 bytes, 32]
    qh = blocks[:, 128:192].reshape(n, 2, 1, 32).to(torch.int32)
    scales = blocks[:, 192:208].contiguous().view(torch.int8).float()  # [n, 16]
    d = _f16(blocks[:, 208:210])
    # Within each half of 128 values, quarter j (32 values) takes nibbles of ql bytes
    # (j % 2) * 32.. (low nibble for j < 2, high for j >= 2) and bits 2j, 2j+1 of qh.
    low, high = _nibbles(ql.to(torch.int32))
    nibbles = torch.cat((low, high), dim=2)  # [n, half, 4, 32]: quarters 0..3
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.int32).view(1, 1, 4, 1)
    top = (qh >> shifts) & 3
    q = ((nibbles | (top << 4)) - 32).float().reshape(n, 16, 16)  # 16 groups of 16 values
    scale = (d * scales).unsqueeze(-1)  # [n, 16, 1]
    return (scale * q).reshape(n, 256)


_BLOCK_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": _q8_0,
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}
FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED_TYPES = (*FLOAT_TYPES, *BLOCK_SHAPES)


def dequantize(raw: torch.Tensor, type_name: str, row_length: int) -> torch.Tensor:
    """[rows, bytes per row] uint8 of one GGUF tensor -> [rows, row_length] float32."""
    rows = raw.shape[0]
    raw = raw.contiguous()
    if type_name == "F32":
        return raw.view(torch.float32).reshape(rows, row_length)
    if type_name == "F16":
        return raw.view(torch.float16).reshape(rows, row_length).float()
    if type_name == "BF16":
        return raw.view(torch.bfloat16).reshape(rows, row_length).float()
    values, nbytes = BLOCK_SHAPES[type_name]
    blocks = raw.reshape(-1, nbytes)
    return _BLOCK_FUNCTIONS[type_name](blocks).reshape(rows, row_length)
