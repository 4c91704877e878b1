"""A tensor-parallel rank's slice of an adapter (worker/lora_weights.py's `shard`) through the
Triton kernels, under the interpreter, against the whole adapter on one worker: ranks 0 and
1 of two, in this process. Column-parallel wqkv and w13: each rank's output is its columns
of the whole output (q, k, v and gate, up cut apart). Row-parallel wo and w2: each rank
shrinks its input columns, the partial shrinks are summed (the all-reduce, here the two
ranks' planes added by hand) before the expand, and the sum is the whole adapter's term."""

from __future__ import annotations

import pytest
import torch

from modelfiles.lora_files import BaseShapes, read_lora
from worker.attention.triton_backend import triton_missing
from worker.lora_slots import LoraSlots
from worker.lora_triton import TritonLoraStep
from worker.lora_weights import FUSED_PROJECTIONS, load_lora_adapter, rank_shapes
from worker.model_args import args_from_meta_params
from worker.random_model import write_random_lora

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

PARAMS = {"dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 64,
          "multiple_of": 32, "norm_eps": 1e-5, "max_seq_len": 64,
          "rope_theta": 10000.0}  # fmt: skip
CPU = torch.device("cpu")


def slots_holding(manifest, base: BaseShapes, shard: tuple[int, int] | None) -> LoraSlots:
    adapter = load_lora_adapter(manifest, 1, "a", base, torch.float32, CPU, True, shard)
    local = base if shard is None else rank_shapes(base, shard[1])
    slots = LoraSlots(1, 8, local, torch.float32, CPU, fused=True)
    slots.store(0, adapter)
    return slots


def test_two_ranks_slices_add_what_the_whole_adapter_adds(tmp_path) -> None:
    base = BaseShapes.of(args_from_meta_params(PARAMS, PARAMS["vocab_size"]))
    manifest = read_lora(str(write_random_lora(tmp_path, PARAMS, 8, seed=3)), base, 8)
    whole = slots_holding(manifest, base, None)
    ranks = [slots_holding(manifest, base, (rank, 2)) for rank in (0, 1)]
    rows = torch.tensor([0, -1, 0, 0, -1])  # two rows on the base model alone
    gen = torch.Generator().manual_seed(0)
    for name, modules in FUSED_PROJECTIONS.items():
        in_features = base.in_out(modules[0])[0]
        widths = [base.in_out(m)[1] for m in modules]
        x = torch.randn(len(rows), in_features, generator=gen)
        expected = torch.zeros(len(rows), sum(widths))
        TritonLoraStep(whole, rows).add(expected, x, 0, name)
        assert expected[rows >= 0].abs().min() > 0  # every adapted value moved
        if name in ("wo", "w2"):  # row-parallel: rank r holds input columns r of 2
            got, alone = row_parallel(ranks, rows, x, name, sum(widths))
            assert not torch.allclose(alone, expected)  # a partial term alone is not the sum
        else:  # column-parallel: each slice's rows r of 2, side by side
            pieces = []
            for slots in ranks:
                out = torch.zeros(len(rows), sum(widths) // 2)
                TritonLoraStep(slots, rows).add(out, x, 0, name)
                pieces.append(out.split([w // 2 for w in widths], dim=1))
            # whole output's slice s = [rank 0's slice s | rank 1's slice s]
            got = torch.cat([torch.cat([pieces[0][s], pieces[1][s]], dim=1)
                             for s in range(len(widths))], dim=1)  # fmt: skip
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=name)


def row_parallel(ranks: list[LoraSlots], rows: torch.Tensor, x: torch.Tensor, name: str,
                 width: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(rank 0's output, its shrink summed with rank 1's; rank 1's, left unsummed)."""
    inputs = x.chunk(2, dim=1)
    planes: list[torch.Tensor] = []

    def keep(u: torch.Tensor) -> torch.Tensor:
        planes.append(u.clone())
        return u

    alone = torch.zeros(len(rows), width)
    TritonLoraStep(ranks[1], rows, reduce=keep).add(alone, inputs[1], 0, name)
    got = torch.zeros(len(rows), width)
    TritonLoraStep(ranks[0], rows, reduce=lambda u: u.add_(planes[0])).add(got, inputs[0], 0, name)
    return got, alone
