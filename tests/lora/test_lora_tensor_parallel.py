"""LoRA adapters on a two-rank tensor-parallel worker (this process rank 0, rank 1 a process
it starts; gloo on the CPU): each rank holds its slice of every adapter, cut as the base
weights are (B's rows for the column-parallel q, k, v, gate, up; A's columns for the
row-parallel o and down, whose partial shrinks are all-reduced), and requests on several
adapters and on none, batched, prefilled in chunks, give the tokens one worker gives and
logprobs within 1e-4 (only the order of the sums differs)."""

from __future__ import annotations

import pytest
import torch

from contract.sampling import SamplingParams
from scheduler.engine import Engine
from tests.lora.adapters import random_prompts

pytestmark = [pytest.mark.server, pytest.mark.slow]

PARAMS = SamplingParams(max_tokens=8, temperature=0.0, logprobs=True, ignore_eos=True)


def _generate(adapted, prompts, names, tensor_parallel_size: int):
    specs = tuple(f"{name}={path}" for name, path in adapted.adapters.items())
    # Rank 0 runs in this process and takes its share of the cores (torch's thread count):
    # given back after, or the tests that follow would run with fewer threads.
    threads = torch.get_num_threads()
    engine = Engine.from_model_dir(
        adapted.model_dir, device="cpu", lora=specs, num_kv_blocks=128, max_loras=2,
        long_prefill_threshold=8, max_num_batched_tokens=32, max_num_seqs=8,
        tensor_parallel_size=tensor_parallel_size, distributed_timeout=30.0,
    )  # fmt: skip
    try:
        assert engine.info.max_loras == 2
        return engine.generate(prompts, PARAMS, loras=names)
    finally:
        engine.close()
        torch.set_num_threads(threads)


def test_two_ranks_serve_adapters_as_one_worker_does(random_adapted) -> None:
    prompts = random_prompts(9, 2)
    names = ["all8", None, "qvdown4", "gateup16"]  # three adapters over max_loras 2: turns
    batch = [(p, n) for p in prompts for n in names]
    args = ([p for p, _ in batch], [n for _, n in batch])
    one = _generate(random_adapted, *args, tensor_parallel_size=1)
    two = _generate(random_adapted, *args, tensor_parallel_size=2)
    for (_, name), want, have in zip(batch, one, two, strict=True):
        assert have.token_ids == want.token_ids, name
        assert have.logprobs == pytest.approx(want.logprobs, abs=1e-4), name
    # The adapters changed the answers: the comparison is not vacuous.
    base = {tuple(p): o.token_ids for (p, n), o in zip(batch, one, strict=True) if n is None}
    assert all(o.token_ids != base[tuple(p)] for (p, n), o in zip(batch, one, strict=True) if n)
