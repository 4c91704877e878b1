"""The resident adapters stacked in fixed buffers, one slot per adapter, for the Triton path
(worker/lora_triton.py): per layer and projection, A as [max_loras, slices, max_rank, in] and
B as [max_loras, out, max_rank], zero past each adapter's rank and in the slices it does not
adapt. The buffers are made once and never move, so a captured CUDA graph can read them (and
a per-row slot index) whatever adapters the slots hold when it replays.

    # wqkv, max rank 16, an adapter of rank 8 on q and v in slot 2:
    # a[2, 0, :8] = A_q, a[2, 2, :8] = A_v, b[2, 0:q_dim, :8] = B_q, b[2, q+kv:, :8] = B_v
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelfiles.lora_files import BaseShapes
from worker.lora_weights import FUSED_PROJECTIONS, SPLIT_PROJECTIONS, LoraAdapter


@dataclass(slots=True)
class SlotProjection:
    """One layer's projection, every slot's adapter of it."""

    a: torch.Tensor  # [max_loras, num_slices, max_rank, in_features]
    b: torch.Tensor  # [max_loras, out_features, max_rank], the scaling folded in
    ranks: torch.Tensor  # [max_loras] int32: the slot's rank here, 0 where it adapts nothing
    bounds: torch.Tensor  # [num_slices + 1] int32: each slice's first output row, then the end
    bounds_host: list[int]


class LoraSlots:
    """max_loras slots of stacked adapter weights on one device."""

    def __init__(
        self,
        max_loras: int,
        max_rank: int,
        base: BaseShapes,
        dtype: torch.dtype,
        device: torch.device,
        fused: bool,
    ) -> None:
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.dtype = dtype
        projections = FUSED_PROJECTIONS if fused else SPLIT_PROJECTIONS
        self.layers: list[dict[str, SlotProjection]] = []
        for _ in range(base.n_layers):
            layer = {}
            for name, modules in projections.items():
                in_features = base.in_out(modules[0])[0]
                bounds = [0]
                for module in modules:
                    bounds.append(bounds[-1] + base.in_out(module)[1])
                a_shape = (max_loras, len(modules), max_rank, in_features)
                layer[name] = SlotProjection(
                    a=torch.zeros(a_shape, dtype=dtype, device=device),
                    b=torch.zeros((max_loras, bounds[-1], max_rank), dtype=dtype, device=device),
                    ranks=torch.zeros(max_loras, dtype=torch.int32, device=device),
                    bounds=torch.tensor(bounds, dtype=torch.int32, device=device),
                    bounds_host=bounds,
                )
            self.layers.append(layer)

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            for p in layer.values()
            for t in (p.a, p.b)
        )

    def store(self, slot: int, adapter: LoraAdapter) -> None:
        """Put `adapter` in `slot`, over whatever the slot held."""
        for layer, adapted in zip(self.layers, adapter.layers, strict=True):
            for name, projection in layer.items():
                projection.a[slot].zero_()
                projection.b[slot].zero_()
                lora = adapted.get(name)
                if lora is None:
                    projection.ranks[slot] = 0
                    continue
                rank = 0
                for part in lora.parts:
                    piece = projection.bounds_host.index(part.out_start)
                    width = part.rank_end - part.rank_start
                    rank = max(rank, width)
                    projection.a[slot, piece, :width] = lora.a[part.rank_start : part.rank_end]
                    projection.b[slot, part.out_start : part.out_end, :width] = part.b
                projection.ranks[slot] = rank
