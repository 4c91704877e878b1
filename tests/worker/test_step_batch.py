"""A step's flat batch holds, for every token it computes, the right id, position and cache
slot, whether every sequence computes one token (indices built on the host) or some compute
prompt chunks (built with tensor ops)."""

from __future__ import annotations

import random

import pytest
import torch

from contract.sampling import SamplingParams
from worker.attention.torch_backend import TorchAttentionBackend
from worker.step_batch import RequestState, build_step_batch

BLOCK_SIZE = 4
CPU = torch.device("cpu")


def random_states(rng: random.Random, count: int) -> list[RequestState]:
    """Requests with random tokens, some of them cached, on blocks in shuffled order."""
    free = list(range(200))
    rng.shuffle(free)
    states = []
    for i in range(count):
        length = rng.randint(1, 30)
        token_ids = [rng.randrange(1000) for _ in range(length)]
        blocks = [free.pop() for _ in range(-(-(length + 8) // BLOCK_SIZE))]
        params = SamplingParams(temperature=0.0, echo=rng.random() < 0.2)
        states.append(RequestState(f"r{i}", token_ids, blocks, params, rng.randrange(length), 1))
    return states


def expected_rows(scheduled: list[tuple[RequestState, int]]) -> list[tuple[int, int, int]]:
    """(token id, position, cache slot) of every row, decodes first, computed token by token."""
    order = sorted(scheduled, key=lambda pair: pair[1] != 1)
    rows = []
    for state, n in order:
        for position in range(state.num_computed, state.num_computed + n):
            block = state.block_ids[position // BLOCK_SIZE]
            rows.append(
                (state.token_ids[position], position, block * BLOCK_SIZE + position % BLOCK_SIZE)
            )
    return rows


@pytest.mark.parametrize("decodes_only", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_every_row_holds_its_token_position_and_slot(decodes_only: bool, seed: int) -> None:
    rng = random.Random(seed)
    states = random_states(rng, rng.randint(1, 9))
    scheduled = [
        (s, 1 if decodes_only else rng.randint(1, len(s.token_ids) - s.num_computed))
        for s in states
    ]
    if not decodes_only:  # at least one prompt chunk
        state = states[0]
        state.num_computed = 0
        scheduled[0] = (state, len(state.token_ids))
    batch = build_step_batch(scheduled, BLOCK_SIZE, CPU, TorchAttentionBackend(BLOCK_SIZE))
    rows = expected_rows(scheduled)
    assert batch.input_ids.tolist() == [token for token, _, _ in rows]
    assert batch.positions.tolist() == [position for _, position, _ in rows]
    assert batch.attn.slot_mapping.tolist() == [slot for _, _, slot in rows]
    order = sorted(scheduled, key=lambda pair: pair[1] != 1)
    contexts = [s.num_computed + n for s, n in order]
    assert batch.attn.seq_lens.tolist() == contexts
    starts = [0]
    for _, n in order:
        starts.append(starts[-1] + n)
    assert batch.attn.query_start_loc.tolist() == starts
    tables = batch.attn.block_tables.tolist()
    for (state, _), table, context in zip(order, tables, contexts, strict=True):
        blocks = -(-context // BLOCK_SIZE)
        assert table[:blocks] == state.block_ids[:blocks]
        assert set(table[blocks:]) <= {0}
    assert batch.attn.block_tables.dtype == batch.attn.seq_lens.dtype == torch.int32
    # A sequence whose step reaches its last known token samples from its last row.
    sampled = [plan.sample_row for plan in batch.plans if plan.sample_row is not None]
    logits_rows = batch.logits_rows.tolist()
    for (state, n), plan in zip(scheduled, batch.plans, strict=True):
        if state.num_computed + n == len(state.token_ids):
            row = starts[order.index((state, n))] + n - 1
            assert logits_rows[plan.sample_row] == row
    assert len(sampled) == sum(s.num_computed + n == len(s.token_ids) for s, n in scheduled)
