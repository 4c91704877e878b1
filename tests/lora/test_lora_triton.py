"""The Triton LoRA kernels (worker/lora_triton.py) under Triton's CPU interpreter, against the
torch path (worker/lora_batch.py) on the same adapters and against a dense float64
reference: ragged row counts, rows on several adapters and on none (in runs and shuffled),
ranks 8, 16 and 64 under a max rank of 64, the fused wqkv and w13 with some slices adapted
and others not, the shrink's reduction split or not."""

from __future__ import annotations

import random

import pytest
import torch

from modelfiles.lora_files import BaseShapes
from worker.attention.triton_backend import triton_missing
from worker.lora_batch import lora_step
from worker.lora_slots import LoraSlots
from worker.lora_triton import TritonLoraStep, row_slots_of
from worker.lora_weights import FUSED_PROJECTIONS, LoraAdapter
from worker.random_model import random_lora_adapter

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

# head_dim 16, grouped-query attention; hidden 80 is no multiple of the kernels' blocks.
BASE = BaseShapes(dim=64, q_dim=64, kv_dim=32, hidden_dim=80, n_layers=2, n_heads=4,
                  n_kv_heads=2)  # fmt: skip
MAX_RANK = 64
# (lora_id, rank, adapted modules): q and v only, every module, the MLP only.
ADAPTERS = ((7, 8, ("q", "v", "gate")), (3, 64, ("q", "k", "v", "o", "gate", "up", "down")),
            (5, 16, ("k", "up", "down", "o")))  # fmt: skip


def random_adapter(lora_id: int, rank: int, modules: tuple[str, ...], dtype: torch.dtype,
                   gen: torch.Generator) -> LoraAdapter:  # fmt: skip
    return random_lora_adapter(BASE, lora_id, rank, modules, dtype, gen)


def dense_reference(out: torch.Tensor, x: torch.Tensor, row_ids: list[int],
                    adapters: dict[int, LoraAdapter], layer: int, projection: str):  # fmt: skip
    """out + x A^T B^T per row in float64, from the adapter's own tensors."""
    ref = out.double().clone()
    for row, lora_id in enumerate(row_ids):
        lora = adapters[lora_id].layers[layer].get(projection) if lora_id else None
        if lora is None:
            continue
        for part in lora.parts:
            a = lora.a[part.rank_start : part.rank_end].double()
            ref[row, part.out_start : part.out_end] += (x[row].double() @ a.T) @ part.b.double().T
    return ref


def layout(num_tokens: int, shuffled: bool, rng: random.Random) -> list[int]:
    """Each row's lora_id (0: the base model): runs as the worker orders them, or shuffled."""
    choices = [0, *(lora_id for lora_id, _, _ in ADAPTERS)]
    rows = sorted(rng.choice(choices) for _ in range(num_tokens))
    if shuffled:
        rng.shuffle(rows)
    return rows


def runs_of(row_ids: list[int]) -> list[tuple[int, int, int]]:
    runs: list[tuple[int, int, int]] = []
    for row, lora_id in enumerate(row_ids):
        if lora_id and runs and runs[-1][2] == lora_id and runs[-1][1] == row:
            runs[-1] = (runs[-1][0], row + 1, lora_id)
        elif lora_id:
            runs.append((row, row + 1, lora_id))
    return runs


@pytest.fixture(scope="module", params=[torch.float32, torch.float16], ids=str)
def resident(request):
    """The adapters, and slots holding them: slot 0 left empty, slot 3 holding an adapter
    that no row uses (a slot's stale contents must not leak)."""
    dtype = request.param
    gen = torch.Generator().manual_seed(1)
    adapters = {i: random_adapter(i, rank, mods, dtype, gen) for i, rank, mods in ADAPTERS}
    slots = LoraSlots(5, MAX_RANK, BASE, dtype, torch.device("cpu"), fused=True)
    slots.store(3, random_adapter(9, 16, ("q", "o", "up"), dtype, gen))
    slot_of = {7: 4, 3: 1, 5: 2}
    for lora_id, slot in slot_of.items():
        slots.store(slot, adapters[lora_id])
    return dtype, adapters, slots, slot_of


@pytest.mark.parametrize("num_tokens", [1, 5, 37])
@pytest.mark.parametrize("shuffled", [False, True], ids=["runs", "shuffled"])
@pytest.mark.parametrize("splits", [None, 3], ids=["split-by-shape", "split-3"])
def test_triton_adds_what_the_torch_path_and_the_dense_reference_add(
    resident, num_tokens, shuffled, splits
) -> None:
    dtype, adapters, slots, slot_of = resident
    rng = random.Random(num_tokens * 10 + shuffled)
    gen = torch.Generator().manual_seed(num_tokens)
    row_ids = layout(num_tokens, shuffled, rng)
    runs = runs_of(row_ids)
    row_slots = torch.tensor(row_slots_of(runs, slot_of, num_tokens), dtype=torch.int64)
    triton_step = TritonLoraStep(slots, row_slots, splits)
    torch_step = lora_step(runs, adapters)
    layer = 1  # the second layer: the slots index layers right
    for projection, modules in FUSED_PROJECTIONS.items():
        in_features = BASE.in_out(modules[0])[0]
        out_features = sum(BASE.in_out(m)[1] for m in modules)
        x = torch.randn(num_tokens, in_features, generator=gen).to(dtype)
        base = torch.randn(num_tokens, out_features, generator=gen).to(dtype)
        got, expected = base.clone(), base.clone()
        triton_step.add(got, x, layer, projection)
        torch_step.add(expected, x, layer, projection)
        reference = dense_reference(base, x, row_ids, adapters, layer, projection)
        where = f"layer {layer} {projection}"
        # Base-only rows keep their bits; adapted rows moved.
        base_rows = torch.tensor([i == 0 for i in row_ids])
        assert torch.equal(got[base_rows], base[base_rows]), where
        if dtype == torch.float32:  # reassociation of sums of up to 80 terms
            tolerance = {"rtol": 1e-5, "atol": 1e-5}
        else:  # the shrink rounds to float16 on both paths, then the output rounds
            tolerance = {"rtol": 4e-3, "atol": 4e-3}
        torch.testing.assert_close(got, expected, **tolerance, msg=where)
        torch.testing.assert_close(got.double(), reference, **tolerance, msg=where)
        adapted = [i for i, lora_id in enumerate(row_ids)
                   if lora_id and projection in adapters[lora_id].layers[layer]]  # fmt: skip
        if adapted:
            assert not torch.equal(got[adapted], base[adapted]), where


def test_a_slot_stored_again_holds_only_the_new_adapter() -> None:
    """A wider adapter evicted for a narrower one: its ranks past the new rank, and the
    slices the new one does not adapt, are zero again."""
    gen = torch.Generator().manual_seed(2)
    slots = LoraSlots(2, MAX_RANK, BASE, torch.float32, torch.device("cpu"), fused=True)
    wide = random_adapter(1, 64, ("q", "k", "v", "o", "gate", "up", "down"), torch.float32, gen)
    narrow = random_adapter(2, 8, ("q", "v"), torch.float32, gen)  # q rank 8, v rank 4
    slots.store(1, wide)
    slots.store(1, narrow)
    wqkv, w13 = slots.layers[0]["wqkv"], slots.layers[0]["w13"]
    assert wqkv.ranks[1] == 8 and w13.ranks[1] == 0
    assert wqkv.a[1, 0, :8].all() and not wqkv.a[1, 0, 8:].any()
    assert not wqkv.a[1, 1].any()  # k: not adapted
    assert wqkv.a[1, 2, :4].all() and not wqkv.a[1, 2, 4:].any()
    q_end, k_end = BASE.q_dim, BASE.q_dim + BASE.kv_dim
    assert wqkv.b[1, :q_end, :8].all() and not wqkv.b[1, :q_end, 8:].any()
    assert not wqkv.b[1, q_end:k_end].any() and not wqkv.b[1, k_end:, 4:].any()
    assert not w13.b[1].any() and not w13.a[1].any()
    assert slots.layers[1]["wo"].ranks.tolist() == [0, 0]
