"""LoRA adapters in one forward pass: the resident adapters (at most max_loras, least
recently used out first) and one step's segments.

The step's sequences are ordered so that each adapter's tokens are contiguous runs of the
flat batch (worker/step_batch.py sorts by adapter within the decodes and within the
prefills), so each projection adds, per run, x[run] A^T B^T into out[run]: a shrink and an
expand matmul per adapter per projection, the segmented (SGMV) form, with no gather and no
copy of the activations; tokens on the base model alone cost nothing.

    # runs [(0, 3, adapter 7), (5, 9, adapter 2)]: rows 3-4 are base-only
    # out[0:3] += (x[0:3] A7^T) B7^T ; out[5:9] += (x[5:9] A2^T) B2^T

On CUDA (where Triton is installed) the resident adapters also sit in the fixed slots of
worker/lora_slots.py and a step runs worker/lora_triton.py's kernels instead, each row
carrying its adapter's slot; the adapters' own tensors then stay on the host.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from contract.step import LoraRef
from modelfiles.lora_files import BaseShapes, LoraError, read_lora
from worker.attention.triton_backend import triton_missing
from worker.device_io import to_device
from worker.lora_slots import LoraSlots
from worker.lora_triton import TritonLoraStep, row_slots_of
from worker.lora_weights import LoraAdapter, load_lora_adapter, rank_shapes


@dataclass(slots=True)
class LoraRun:
    start: int  # first row of the flat batch
    end: int  # one past the last
    adapter: LoraAdapter


# A tensor-parallel rank's shrink of these is a partial sum (worker/lora_weights.py).
ROW_PARALLEL_PROJECTIONS = ("wo", "w2")

# Sums a tensor over the tensor-parallel ranks, in place (RankGroup.all_reduce).
Reduce = Callable[[torch.Tensor], torch.Tensor]


class LoraStep:
    """One step's adapter runs; the model's layers call `add` after each projection.
    `reduce`: on a tensor-parallel rank, what sums a row-parallel projection's shrink."""

    def __init__(self, runs: list[LoraRun], reduce: Reduce | None = None) -> None:
        self.runs = runs
        self.reduce = reduce

    def add(self, out: torch.Tensor, x: torch.Tensor, layer: int, projection: str) -> None:
        """out[run] += x[run] A^T B^T for every run whose adapter adapts `projection`.
        out: [num_tokens, out_features], updated in place; x: [num_tokens, in_features]."""
        for run in self.runs:
            adapted = run.adapter.layers[layer].get(projection)
            if adapted is None:
                continue
            shrunk = torch.mm(x[run.start : run.end], adapted.a.t())  # [run, ranks]
            if self.reduce is not None and projection in ROW_PARALLEL_PROJECTIONS:
                shrunk = self.reduce(shrunk)
            rows = out[run.start : run.end]
            for part in adapted.parts:
                rows[:, part.out_start : part.out_end].addmm_(
                    shrunk[:, part.rank_start : part.rank_end], part.b.t()
                )


def lora_step(
    runs: list[tuple[int, int, int]],
    adapters: dict[int, LoraAdapter],
    reduce: Reduce | None = None,
) -> LoraStep:
    """The step's runs of rows (StepBatch.lora_runs) with their adapters' tensors."""
    steps = [LoraRun(start, end, adapters[lora_id]) for start, end, lora_id in runs]
    return LoraStep(steps, reduce)


def triton_lora_path(device: torch.device) -> bool:
    """Whether a worker on `device` runs its adapters through the Triton kernels."""
    return device.type == "cuda" and triton_missing() is None


class ResidentLoras:
    """The adapters the worker holds, loaded from their files on first use; with `slotted`
    each also in a slot of one LoraSlots, for the Triton path. `shard` (rank, world size)
    and `reduce`: a tensor-parallel rank's, which holds its slice of each adapter."""

    def __init__(
        self,
        max_loras: int,
        max_rank: int,
        base: BaseShapes,
        dtype: torch.dtype,
        device: torch.device,
        fused: bool,
        slotted: bool = False,
        shard: tuple[int, int] | None = None,
        reduce: Reduce | None = None,
    ) -> None:
        self.max_loras = max_loras
        self.max_rank = max_rank
        self.base = base
        self.dtype = dtype
        self.device = device
        self.fused = fused
        self.shard = shard
        self.reduce = reduce
        self._adapters: OrderedDict[int, LoraAdapter] = OrderedDict()  # least recent first
        self.slots: LoraSlots | None = None
        self.slot_of: dict[int, int] = {}  # lora_id -> its slot, with `slotted`
        if slotted:
            local = base if shard is None else rank_shapes(base, shard[1])
            self.slots = LoraSlots(max_loras, max_rank, local, dtype, device, fused)

    @property
    def resident_ids(self) -> list[int]:
        return list(self._adapters)

    def acquire(self, refs: list[LoraRef]) -> dict[int, LoraAdapter | LoraError]:
        """Make `refs` (at most max_loras distinct adapters: the scheduler's cap) resident,
        evicting the least recently used others; an adapter whose files no longer load gets
        its LoraError instead (its requests fail alone)."""
        wanted = {ref.lora_id: ref for ref in refs}
        if len(wanted) > self.max_loras:
            raise ValueError(
                f"a step uses {len(wanted)} LoRA adapters, the worker holds at most "
                f"{self.max_loras} (--max-loras)"
            )
        found: dict[int, LoraAdapter | LoraError] = {}
        for lora_id, ref in wanted.items():
            adapter = self._adapters.get(lora_id)
            if adapter is not None:
                self._adapters.move_to_end(lora_id)
                found[lora_id] = adapter
                continue
            while len(self._adapters) >= self.max_loras:
                oldest = next(i for i in self._adapters if i not in wanted)
                del self._adapters[oldest]
                self.slot_of.pop(oldest, None)
            try:
                found[lora_id] = self._adapters[lora_id] = self._load(ref)
            except (LoraError, OSError) as exc:
                found[lora_id] = LoraError(f"adapter {ref.name!r}: {exc}")
        return found

    def _load(self, ref: LoraRef) -> LoraAdapter:
        manifest = read_lora(ref.path, self.base, self.max_rank)
        # Slotted, the slot holds the device copy: the adapter's own tensors stay here.
        device = torch.device("cpu") if self.slots else self.device
        adapter = load_lora_adapter(
            manifest, ref.lora_id, ref.name, self.base, self.dtype, device, self.fused, self.shard
        )
        if self.slots is not None:
            taken = set(self.slot_of.values())
            slot = next(i for i in range(self.max_loras) if i not in taken)
            self.slots.store(slot, adapter)
            self.slot_of[ref.lora_id] = slot
        return adapter

    def step(
        self, runs: list[tuple[int, int, int]], adapters: dict[int, LoraAdapter], num_tokens: int
    ) -> LoraStep | TritonLoraStep:
        """The step's adapter path over its runs (StepBatch.lora_runs) of `num_tokens` rows."""
        if self.slots is None:
            return lora_step(runs, adapters, self.reduce)
        rows = row_slots_of(runs, self.slot_of, num_tokens)
        return TritonLoraStep(self.slots, to_device(rows, torch.long, self.device),
                              reduce=self.reduce)  # fmt: skip
