"""Speculative decoding on a two-rank tensor-parallel worker: every rank applies the same
proposals and counts the accepted ones from the next step's tokens, so the ranks stay in step
and the greedy output equals one rank's without speculation."""

from __future__ import annotations

import pytest

from scheduler import Engine, SamplingParams
from tests.conftest import STORIES_DIR

pytestmark = pytest.mark.server
PROMPTS = ["Lily and Ben went to the park. Lily and Ben", "Once upon a time"]


def test_two_ranks_verify_proposals_in_step() -> None:
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    settings = {"device": "cpu", "num_kv_blocks": 64}
    expected = Engine.from_model_dir(STORIES_DIR, **settings).generate(PROMPTS, params)
    two = Engine.from_model_dir(
        STORIES_DIR, tensor_parallel_size=2, speculative="ngram", distributed_timeout=10.0,
        **settings,
    )  # fmt: skip
    try:
        got = two.generate(PROMPTS, params)
        assert [o.token_ids for o in got] == [o.token_ids for o in expected]
        assert two.scheduler.speculator.num_accepted > 0
        assert two.worker.available
    finally:
        two.close()
