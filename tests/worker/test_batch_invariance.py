"""Greedy output of a prompt does not depend on what it is packed with."""

from __future__ import annotations

import random

import pytest

from tests.worker.driver import GREEDY, Driver, generate_alone, start_worker


@pytest.mark.slow
def test_greedy_output_is_identical_alone_and_packed_with_15_others(stories_dir):
    worker = start_worker(stories_dir, num_kv_blocks=512)
    rng = random.Random(7)
    prompts = [[1] + [rng.randrange(3, 512) for _ in range(rng.randint(1, 120))] for _ in range(16)]
    max_new = [rng.randint(4, 24) for _ in prompts]

    driver = Driver(worker, random.Random(1))
    seqs = [
        driver.add(f"r{i}", prompt, GREEDY, n)
        for i, (prompt, n) in enumerate(zip(prompts, max_new, strict=True))
    ]
    # Chunks of 16 keep prefills and decodes of different requests in the same steps.
    driver.run(chunk_of=lambda seq: 16)

    for seq, prompt, n in zip(seqs, prompts, max_new, strict=True):
        assert seq.output_ids == generate_alone(worker, prompt, GREEDY, n).output_ids
