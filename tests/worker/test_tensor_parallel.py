"""Tensor parallel on CPU with gloo: this process is rank 0, rank 1 a process it starts.

Two ranks give the same greedy tokens as one, and logits within 1e-4 (only the summation
order of the all-reduces differs), for stories260K, for a random GQA model read from a Hugging
Face export (split at load, a vocabulary two ranks do not divide), and for Meta checkpoints
in two shards (each rank reads only its own) and in four (each reads the two of its slice).
An N the model cannot be split by is
refused before any process starts; a rank killed or hung mid-generation fails the requests in
flight within the collective timeout, and the worker stays unavailable.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from contract.step import Worker
from scheduler import Engine, SamplingParams
from tests.conftest import STORIES_DIR
from tests.worker.checkpoint_writers import export_hf, split_meta
from tests.worker.driver import ALL_ROWS, Driver, ModelFiles, read_meta_model
from worker import create_worker
from worker.random_model import random_weights, write_meta_model

pytestmark = pytest.mark.server

PROMPTS = [[1, 203, 207, 161, 171], [1, 24, 80], [1, 190, 33, 18, 99, 7, 210, 3, 14]]  # < 251
NUM_NEW_TOKENS = 10
TIMEOUT = 3.0  # seconds a collective may wait: short, for the failure tests


@contextmanager
def started(model_dir: Path, tensor_parallel_size: int, **settings: object) -> Iterator[Worker]:
    settings.setdefault("num_kv_blocks", 64)
    worker = create_worker(
        model=str(model_dir),
        device="cpu",
        tensor_parallel_size=tensor_parallel_size,
        distributed_timeout=TIMEOUT,
        **settings,
    )
    try:
        yield worker
    finally:
        if tensor_parallel_size > 1:
            worker.close()


def greedy_run(worker: Worker) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Every prompt's greedy tokens (echo on, so every position has logits; prefills in
    chunks of 4), and the logits rank 0 sampled from, step by step."""
    runner = getattr(worker, "runner", worker)  # rank 0's ModelRunner
    seen: list[torch.Tensor] = []
    sample = runner.sample

    def recording(scheduled: object, batch: object, logits: torch.Tensor) -> object:
        seen.append(logits.clone())
        return sample(scheduled, batch, logits)

    runner.sample = recording
    driver = Driver(worker)
    seqs = [driver.add(f"r{i}", p, ALL_ROWS, NUM_NEW_TOKENS) for i, p in enumerate(PROMPTS)]
    driver.run(chunk_of=lambda seq: 4)
    return [seq.output_ids for seq in seqs], seen


def assert_same_as_one_rank(model_dir: Path, reference_dir: Path | None = None) -> None:
    with started(reference_dir or model_dir, 1) as one:
        tokens_one, logits_one = greedy_run(one)
    with started(model_dir, 2) as two:
        assert two.info().tensor_parallel_size == 2
        tokens_two, logits_two = greedy_run(two)
    assert tokens_two == tokens_one
    assert len(logits_two) == len(logits_one)
    for a, b in zip(logits_one, logits_two, strict=True):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4


def test_stories260k_on_two_ranks_matches_one() -> None:
    assert_same_as_one_rank(STORIES_DIR)


def test_random_gqa_model_split_from_a_hugging_face_export_matches_one(tmp_path: Path) -> None:
    params = {
        "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 251,
        "multiple_of": 16, "ffn_dim_multiplier": None, "norm_eps": 1e-5, "max_seq_len": 512,
        "rope_theta": 10000.0,
    }  # fmt: skip
    weights = random_weights(params, seed=3)
    meta_dir = write_meta_model(tmp_path / "meta", params, weights)
    hf_dir = export_hf(ModelFiles(meta_dir, params, weights), tmp_path / "hf")
    # 251 rows: rank 0 holds 126, rank 1 125 and a zero row, cut off again on rank 0.
    assert_same_as_one_rank(hf_dir, reference_dir=meta_dir)


@pytest.mark.parametrize(
    ("num_shards", "rank_0_reads", "rank_1_reads"),
    [
        (2, "consolidated.00.pth", "consolidated.01.pth"),
        (4, "consolidated.00.pth, consolidated.01.pth", "consolidated.02.pth, consolidated.03.pth"),
    ],
)
def test_meta_shards_load_per_rank(
    num_shards: int,
    rank_0_reads: str,
    rank_1_reads: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
) -> None:
    """Two shards: each rank reads its own. Four: each reads the two that make its slice.
    Either way the embedding, split by width in the shards, is exchanged once at load."""
    sharded = split_meta(read_meta_model(STORIES_DIR), tmp_path / "sharded", num_shards)
    caplog.set_level(logging.INFO, logger="loom.worker.tp")
    assert_same_as_one_rank(sharded, reference_dir=STORIES_DIR)
    assert f"rank 0 reads {rank_0_reads}\n" in caplog.text
    rank_one = capfd.readouterr().err  # the other rank's log, on the stderr it inherited
    assert f"rank 1 reads {rank_1_reads}\n" in rank_one


def test_a_size_that_does_not_divide_the_kv_heads_is_refused_before_starting() -> None:
    with pytest.raises(ValueError, match=r"does not divide the model's 4 KV heads.*\[1, 2, 4\]"):
        create_worker(model=str(STORIES_DIR), device="cpu", tensor_parallel_size=3)


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_rank_lost_mid_generation_fails_the_requests_within_the_timeout(how: str) -> None:
    # The offline API, as users write it.
    engine = Engine.from_model_dir(
        STORIES_DIR,
        device="cpu",
        num_kv_blocks=64,
        tensor_parallel_size=2,
        distributed_timeout=TIMEOUT,
    )
    try:
        [follower] = engine.worker.processes
        [out] = engine.generate([1, 403, 407], SamplingParams(max_tokens=4, temperature=0))
        assert out.finish_reason == "length"
        flowing = threading.Event()
        lost_at: list[float] = []

        def lose_the_rank() -> None:
            flowing.wait(30)
            os.kill(follower.pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
            lost_at.append(time.monotonic())

        threading.Thread(target=lose_the_rank, daemon=True).start()
        params = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
        engine.add_request([1, 403, 407], params, req_id="long")
        finished = None
        for delta in engine.iter_deltas():  # steps run back to back while the rank is lost
            flowing.set()
            if delta.finished:
                finished = delta
        elapsed = time.monotonic() - lost_at[0]
        assert finished is not None and finished.finish_reason == "error"
        assert finished.unavailable and "tensor-parallel" in finished.error
        assert elapsed < TIMEOUT + 5.0
        assert not engine.worker_available
        # Later requests fail at once, with the same clear reason.
        [out] = engine.generate([1, 5], SamplingParams(max_tokens=2))
        assert out.finish_reason == "error" and "tensor-parallel group has failed" in out.error
    finally:
        engine.close()  # ends the lost rank too, stopped or not
