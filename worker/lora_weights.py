"""A checked LoRA adapter (modelfiles/lora_files.py) loaded into the tensors the model adds:
per layer, per projection the model runs (the fused wqkv and w13 included), one shrink
matrix A for all of the projection's parts and one expand matrix B per part, with the
adapter's scaling folded into B.

    # wqkv adapted on q and v, ranks 8: A = [A_q; A_v] [16, dim]; u = x A^T [T, 16]
    # out[:, 0:q_dim] += u[:, 0:8] B_q^T; out[:, q_dim+kv_dim:] += u[:, 8:16] B_v^T

A tensor-parallel rank holds its slice, cut as the base weights are (worker/tp_loader.py):
for the column-parallel q, k, v, gate and up, B's rows of the rank's heads or MLP slice; for
the row-parallel o and down, A's columns of the rank's inputs, so the rank's shrink is a
partial sum that the model's LoRA step all-reduces before the expand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors import safe_open

from modelfiles.lora_files import BaseShapes, LoraManifest
from worker.hf_layout import rotate_half_to_interleaved


@dataclass(slots=True)
class LoraPart:
    """One adapted part of a projection's output: rows [out_start, out_end) of the output,
    fed by columns [rank_start, rank_end) of the shrunk activations."""

    out_start: int
    out_end: int
    rank_start: int
    rank_end: int
    b: torch.Tensor  # [out_end - out_start, rank_end - rank_start], scaling folded in


@dataclass(slots=True)
class LoraProjection:
    a: torch.Tensor  # [sum of the parts' ranks, in_features]
    parts: list[LoraPart]


# The model's projections and the adapter modules each one's output holds, in row order.
FUSED_PROJECTIONS = {"wqkv": ("q", "k", "v"), "wo": ("o",), "w13": ("gate", "up"), "w2": ("down",)}
ROW_PARALLEL_MODULES = ("o", "down")  # the rest are column-parallel
SPLIT_PROJECTIONS = {
    "wq": ("q",), "wk": ("k",), "wv": ("v",), "wo": ("o",),
    "w1": ("gate",), "w3": ("up",), "w2": ("down",),
}  # fmt: skip


@dataclass(slots=True)
class LoraAdapter:
    """An adapter's tensors, on the model's device in its dtype."""

    lora_id: int
    name: str
    layers: list[dict[str, LoraProjection]]  # per layer: projection name -> its adapter


def load_lora_adapter(
    manifest: LoraManifest,
    lora_id: int,
    name: str,
    base: BaseShapes,
    dtype: torch.dtype,
    device: torch.device,
    fused: bool,
    shard: tuple[int, int] | None = None,
) -> LoraAdapter:
    """Read the adapter's tensors and lay them out for the model's projections; `shard`
    (rank, world size): only that tensor-parallel rank's slice."""
    pairs: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    read = _read_gguf(manifest) if manifest.file_format == "gguf" else _read_safetensors(manifest)
    for t in manifest.tensors:
        a = read(t.a_name).float()
        b = read(t.b_name).float() * manifest.scaling[t.module]
        if manifest.rotate_half_qk and t.module in ("q", "k"):
            # B's rows are the projection's outputs: permuted as the base's wq/wk are.
            heads = base.n_heads if t.module == "q" else base.n_kv_heads
            b = rotate_half_to_interleaved(b, heads)
        if shard is not None:
            rank, world_size = shard
            if t.module in ROW_PARALLEL_MODULES:
                a = a.chunk(world_size, dim=1)[rank]
            else:
                b = b.chunk(world_size, dim=0)[rank]
        pairs[(t.layer, t.module)] = (a, b)
    if shard is not None:
        base = rank_shapes(base, shard[1])
    projections = FUSED_PROJECTIONS if fused else SPLIT_PROJECTIONS
    layers: list[dict[str, LoraProjection]] = []
    for layer in range(base.n_layers):
        adapted: dict[str, LoraProjection] = {}
        for projection, modules in projections.items():
            shrink, parts = [], []
            out_start = rank_start = 0
            for module in modules:
                out_end = out_start + base.in_out(module)[1]
                pair = pairs.get((layer, module))
                if pair is not None:
                    a, b = pair
                    rank_end = rank_start + a.shape[0]
                    shrink.append(a)
                    b = b.to(device=device, dtype=dtype).contiguous()
                    parts.append(LoraPart(out_start, out_end, rank_start, rank_end, b))
                    rank_start = rank_end
                out_start = out_end
            if parts:
                a = torch.cat(shrink).to(device=device, dtype=dtype).contiguous()
                adapted[projection] = LoraProjection(a, parts)
        layers.append(adapted)
    return LoraAdapter(lora_id, name, layers)


def _read_safetensors(manifest: LoraManifest) -> Callable[[str], torch.Tensor]:
    with safe_open(manifest.weights_file, framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    return tensors.__getitem__


def _read_gguf(manifest: LoraManifest) -> Callable[[str], torch.Tensor]:
    from gguf import GGUFReader

    arrays = {t.name: t.data for t in GGUFReader(manifest.weights_file).tensors}
    return lambda name: torch.from_numpy(np.array(arrays[name]))  # a copy off the map


def rank_shapes(base: BaseShapes, world_size: int) -> BaseShapes:
    """One tensor-parallel rank's projection sizes (the model's, cut `world_size` ways)."""
    return dataclasses.replace(
        base,
        q_dim=base.q_dim // world_size,
        kv_dim=base.kv_dim // world_size,
        hidden_dim=base.hidden_dim // world_size,
        n_heads=base.n_heads // world_size,
        n_kv_heads=base.n_kv_heads // world_size,
    )
