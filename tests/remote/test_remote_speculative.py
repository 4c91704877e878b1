"""Speculative decoding with the worker in another process: proposals cross worker.proto,
the remote worker verifies them, and the output equals the in-process engine's, greedy and
seeded, with nothing leaked."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from frontend.remote_engine import remote_engine
from scheduler import Engine, EngineConfig, SamplingParams
from tests.conftest import STORIES_DIR
from tests.remote.conftest import start_worker
from tests.server.serve_process import ServeProcess

NUM_BLOCKS = 32
SPECULATIVE = {"speculative": "ngram", "num_speculative_tokens": 4, "speculative_max_batch": 8}
# Stories repeat their names and phrases: prompt lookup finds them.
PROMPTS = ["Lily and Ben went to the park. Lily and Ben", "Once upon a time", "The cat sat"]


@pytest.fixture(scope="module")
def worker_process() -> Iterator[ServeProcess]:
    process = start_worker("--num-kv-blocks", str(NUM_BLOCKS))
    yield process
    process.stop()


def test_a_remote_worker_verifies_proposals_as_the_embedded_one_does(
    worker_process: ServeProcess,
) -> None:
    remote = remote_engine(EngineConfig.from_kwargs(**SPECULATIVE), worker_process.target, 30, 60)
    try:
        embedded = Engine.from_model_dir(
            STORIES_DIR, num_kv_blocks=NUM_BLOCKS, device="cpu", **SPECULATIVE
        )
        params = [
            SamplingParams(max_tokens=48, temperature=0, ignore_eos=True, logprobs=True),
            SamplingParams(max_tokens=48, temperature=0.8, seed=3, logprobs=True),
            SamplingParams(max_tokens=48, temperature=0, ignore_eos=True),
        ]
        got = remote.generate(PROMPTS, params)
        want = embedded.generate(PROMPTS, params)
        for a, b in zip(got, want, strict=True):
            assert dataclasses.replace(a, req_id="") == dataclasses.replace(b, req_id="")
        assert remote.scheduler.speculator.num_accepted > 0
        assert remote.stats().spec_accepted_tokens == embedded.stats().spec_accepted_tokens
        assert remote.stats().num_free_blocks == NUM_BLOCKS  # nothing leaked
    finally:
        remote.close()
