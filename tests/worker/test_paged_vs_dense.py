"""The paged forward agrees with the dense float64 oracle over randomised batches.

Each trial packs 1-16 sequences (prompts of 1-300 tokens) into steps: prefill chunks of
1-64 tokens, decodes interleaved, each step a random subset in a random order, blocks taken
from a shuffled free list. Logits of every computed position are compared with the
oracle's for that sequence.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests.worker.dense_reference import dense_logits
from tests.worker.driver import (
    ALL_ROWS,
    ModelFiles,
    make_random_model,
    read_meta_model,
    start_worker,
)
from worker.step_batch import RequestState

pytestmark = pytest.mark.slow

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["stories260K", "random-gqa", "random-mha"])
def model_files(request, stories_dir, tmp_path_factory) -> ModelFiles:
    if request.param == "stories260K":
        return read_meta_model(stories_dir)
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "random-gqa":  # 8 query heads share 2 KV heads
        return make_random_model(out, n_heads=8, n_kv_heads=2, seed=1)
    # head_dim 64, as in real models, where the other two have 8
    return make_random_model(out, n_heads=2, n_kv_heads=2, dim=128, seed=2)


def run_random_mix(files: ModelFiles, block_size: int, seed: int) -> dict[str, float]:
    """Returns per-sequence max |paged - dense| over every computed logit."""
    rng = random.Random(seed)
    vocab = files.params["vocab_size"]
    num_seqs = rng.randint(1, 16)
    prompt_lens = [rng.randint(1, 300) for _ in range(num_seqs)]
    max_tokens = max(prompt_lens) + 8
    num_blocks = num_seqs * -(-max_tokens // block_size)
    worker = start_worker(files.model_dir, block_size=block_size, num_kv_blocks=num_blocks)
    free_blocks = list(range(num_blocks))
    rng.shuffle(free_blocks)

    states = [
        RequestState(f"r{i}", [rng.randrange(vocab) for _ in range(n)], [], ALL_ROWS, 0, n)
        for i, n in enumerate(prompt_lens)
    ]
    decodes_left = {s.req_id: rng.randint(0, 8) for s in states}
    logits_at: dict[str, dict[int, torch.Tensor]] = {s.req_id: {} for s in states}
    active = list(states)
    while active:
        picked = rng.sample(active, rng.randint(1, len(active)))
        scheduled = []
        for state in picked:
            if state.num_computed == len(state.token_ids):  # prompt done: feed a decode token
                if decodes_left[state.req_id] == 0:
                    active.remove(state)
                    continue
                decodes_left[state.req_id] -= 1
                state.token_ids.append(rng.randrange(vocab))
            todo = len(state.token_ids) - state.num_computed
            num_tokens = min(todo, rng.randint(1, 64))
            while len(state.block_ids) * block_size < state.num_computed + num_tokens:
                state.block_ids.append(free_blocks.pop())
            scheduled.append((state, num_tokens))
        if not scheduled:
            continue
        batch = worker.build_batch(scheduled)
        with torch.inference_mode():
            hidden = worker.model(
                batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn
            )
            logits = worker.model.compute_logits(hidden, batch.logits_rows)
        for (state, num_tokens), plan in zip(scheduled, batch.plans, strict=True):
            for offset in range(num_tokens):
                row = logits[plan.echo_first_row + offset]
                logits_at[state.req_id][state.num_computed + offset] = row
            state.num_computed += num_tokens

    errors = {}
    for state in states:
        expected = dense_logits(files.weights, files.params, state.token_ids)
        computed = logits_at[state.req_id]
        assert sorted(computed) == list(range(len(state.token_ids)))
        got = torch.stack([computed[p] for p in range(len(state.token_ids))]).double()
        errors[state.req_id] = (got - expected).abs().max().item()
    return errors


@pytest.mark.parametrize("block_size", [1, 16, 32])
def test_paged_forward_matches_dense_oracle(model_files, block_size):
    for seed in (block_size, block_size + 100):
        errors = run_random_mix(model_files, block_size, seed)
        worst = max(errors, key=errors.get)
        assert errors[worst] < TOLERANCE, f"seed {seed}: {worst} differs by {errors[worst]}"
