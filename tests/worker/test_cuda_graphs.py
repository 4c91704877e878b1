"""The bookkeeping around CUDA graphs, without a GPU: the ladder of batch sizes, padding to
the next one, filling the persistent buffers, and which steps replay a graph; graphs off under
tensor parallelism, and a rank without logits replaying (and failing) cleanly.

Where a graph would be replayed, the end-to-end test runs the same forward over the same
persistent buffers eagerly (`ReplayEagerly`), with the Triton kernels under the interpreter.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest
import torch

from common.settings import from_flat
from contract.sampling import SamplingParams
from contract.step import NewRequest, RunningRequest, StepInput, StepOutput
from tests.worker.driver import ALL_ROWS, Driver, start_worker
from worker.attention.triton_backend import triton_missing
from worker.config import WorkerConfig
from worker.cuda_graphs import (
    DecodeGraphs,
    DecodeInputs,
    capture_decode_graphs,
    capture_sizes,
    padded_size,
    replay_size,
)
from worker.parallel import RankFailure
from worker.step_batch import RequestState
from worker.tp_rank import FollowerRunner, follow_step

CPU = torch.device("cpu")
GREEDY_LOGPROBS = SamplingParams(temperature=0.0, logprobs=True, top_logprobs=2)
needs_triton = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")


class ReplayEagerly:
    """A CUDA graph's stand-in on the CPU: the captured forward over the persistent buffers,
    run once at capture (as the real capture's warm-up) and again at every replay."""

    def __init__(self, forward) -> None:
        self.forward = forward
        forward()

    def replay(self) -> torch.Tensor:
        return self.forward()


def decode_state(req_id: str, num_computed: int, block_ids: list[int]) -> RequestState:
    tokens = [10 + i for i in range(num_computed + 1)]  # the token at num_computed is new
    return RequestState(req_id, tokens, block_ids, GREEDY_LOGPROBS, num_computed, num_computed)


def test_the_ladder_is_1_2_4_8_then_steps_of_16_up_to_max_num_seqs() -> None:
    assert capture_sizes(256) == [1, 2, 4, 8, *range(16, 257, 16)]
    assert capture_sizes(100)[-3:] == [80, 96, 100]
    assert capture_sizes(16) == [1, 2, 4, 8, 16]
    assert capture_sizes(3) == [1, 2, 3]
    assert capture_sizes(1) == [1]


def test_a_batch_pads_to_the_next_captured_size() -> None:
    sizes = capture_sizes(40)  # 1, 2, 4, 8, 16, 32, 40
    padded = {n: padded_size(n, sizes) for n in (1, 2, 3, 5, 8, 9, 17, 33, 40, 41)}
    assert padded == {1: 1, 2: 2, 3: 4, 5: 8, 8: 8, 9: 16, 17: 32, 33: 40, 40: 40, 41: None}


def test_filling_writes_each_row_and_marks_the_padding() -> None:
    inputs = DecodeInputs(max_batch=8, max_blocks_per_seq=4, device=CPU)
    # Before any step every slot is padding, so a capture's warm-up writes nowhere.
    assert inputs.slot_mapping.tolist() == [-1] * 8
    scheduled = [
        (decode_state("a", 20, [7, 2]), 1),  # position 20 -> block 2, row 4 -> slot 36
        (decode_state("b", 0, [5]), 1),
        (decode_state("c", 47, [1, 3, 6]), 1),  # position 47 -> block 6, row 15 -> slot 111
    ]
    inputs.fill(scheduled, batch_size=4, block_size=16)
    assert inputs.input_ids[:4].tolist() == [30, 10, 57, 0]
    assert inputs.positions[:4].tolist() == [20, 0, 47, 0]
    assert inputs.slot_mapping[:4].tolist() == [36, 80, 111, -1]
    assert inputs.seq_lens[:4].tolist() == [21, 1, 48, 0]
    assert inputs.block_tables[0, :2].tolist() == [7, 2]
    assert inputs.block_tables[1, :1].tolist() == [5]
    assert inputs.block_tables[2, :3].tolist() == [1, 3, 6]
    assert inputs.query_start_loc[:5].tolist() == [0, 1, 2, 3, 4]

    # A smaller step in the same size: the rows it no longer uses become padding.
    inputs.fill(scheduled[:1], batch_size=4, block_size=16)
    assert inputs.slot_mapping[:4].tolist() == [36, -1, -1, -1]
    assert inputs.seq_lens[:4].tolist() == [21, 0, 0, 0]
    assert inputs.input_ids[:4].tolist() == [30, 0, 0, 0]


@pytest.mark.slow
@needs_triton
# 1 SM: no step splits. 132 (an H100's): every graph splits its decodes 2 ways (stories260K has
# 4 KV heads and 512 positions), fixed at capture while the real lengths change under it.
@pytest.mark.parametrize(("num_sms", "splits"), [(1, 1), (132, 2)], ids=["unsplit", "split-kv"])
def test_decode_steps_replay_and_give_what_the_eager_reference_gives(
    stories_dir, num_sms, splits
) -> None:
    reference = start_worker(stories_dir, device="cpu", attention_backend="torch")
    worker = start_worker(stories_dir, device="cpu", attention_backend="triton")
    assert worker.decode_graphs is None  # the CPU never captures graphs by itself
    worker.attention_backend.num_sms = num_sms
    graphs = DecodeGraphs(
        worker.model, worker.kv_cache, worker.attention_backend, 4, CPU, ReplayEagerly
    )
    assert graphs.sizes == [1, 2, 4]
    n_kv_heads = worker.model.args.n_kv_heads
    for size in graphs.sizes:
        assert worker.attention_backend.splits_for(graphs._metadata[size], n_kv_heads) == splits
    # Capturing ran the forward over padding rows only: nothing reached the cache.
    assert not worker.kv_cache.storage.any()
    worker.decode_graphs = graphs

    rng = random.Random(5)
    requests = {  # req_id: (prompt, options, new tokens, prefill chunk)
        "long": ([1, *rng.choices(range(3, 512), k=20)], GREEDY_LOGPROBS, 6, 64),
        "short": ([1, 400, 7], GREEDY_LOGPROBS, 4, 64),
        # Prefilled a token a step: decode-only steps in which it needs no logits, or
        # (echo) only a prompt token's logprob.
        "slow": ([1, *rng.choices(range(3, 512), k=5)], GREEDY_LOGPROBS, 2, 1),
        "echo": ([1, *rng.choices(range(3, 512), k=4)], ALL_ROWS, 2, 1),
    }
    results = []
    for runner in (reference, worker):
        driver = Driver(runner, random.Random(3))
        seqs = {
            req_id: driver.add(req_id, prompt, options, num_new)
            for req_id, (prompt, options, num_new, _) in requests.items()
        }
        driver.run(chunk_of=lambda seq: requests[seq.req_id][3])
        results.append(seqs)
    expected, got = results
    for req_id in requests:
        assert got[req_id].output_ids == expected[req_id].output_ids, req_id
        assert got[req_id].logprobs == pytest.approx(expected[req_id].logprobs, abs=1e-5)
        assert got[req_id].prompt_logprobs == pytest.approx(
            expected[req_id].prompt_logprobs, abs=1e-5
        )
    # Step 1 prefills "long" and "short" whole (eager); after it every step gives each
    # running request one token: four rows in steps 2-4, three in 5-6 ("short" is done),
    # padded to 4, then "slow" alone.
    assert graphs.num_replays == Counter({4: 5, 1: 1})


def test_a_step_with_a_prefill_chunk_or_too_many_rows_runs_eagerly() -> None:
    sizes = capture_sizes(8)
    decodes = [(decode_state(f"d{i}", 3, [i]), 1) for i in range(9)]
    assert replay_size(decodes[:3], sizes) == 4
    assert replay_size(decodes[:8], sizes) == 8
    assert replay_size(decodes, sizes) is None  # more rows than the largest graph
    chunk = (RequestState("p", [1] * 8, [9], GREEDY_LOGPROBS, 0, 8), 8)
    assert replay_size([*decodes[:2], chunk], sizes) is None


def test_graphs_are_off_under_tensor_parallelism_with_a_log_line(stories_dir, caplog) -> None:
    worker = start_worker(stories_dir, device="cpu", attention_backend="torch")
    with caplog.at_level(logging.INFO, logger="loom.worker"):
        graphs = capture_decode_graphs(
            worker.model, worker.kv_cache, worker.attention_backend, torch.device("cuda"), 8,
            enforce_eager=False, tensor_parallel_size=2,
        )  # fmt: skip
    assert graphs is None  # decided before anything touches a GPU
    assert "CUDA graphs off under tensor parallelism (size 2)" in caplog.text


@pytest.mark.slow
@needs_triton
def test_a_rank_without_logits_replays_and_samples_nothing(stories_dir, monkeypatch) -> None:
    # A tensor-parallel rank other than 0: its model gathers the logits to rank 0 and returns
    # None, which its captured graphs then return too.
    runner = FollowerRunner(from_flat(WorkerConfig, model=str(stories_dir), device="cpu",
                                      attention_backend="triton", num_kv_blocks=16))  # fmt: skip
    monkeypatch.setattr(runner.model, "compute_logits", lambda hidden, rows: None)
    runner.decode_graphs = DecodeGraphs(
        runner.model, runner.kv_cache, runner.attention_backend, 2, CPU, ReplayEagerly
    )
    new = NewRequest("r", [1, 400, 7], [3], GREEDY_LOGPROBS)
    assert runner.execute(StepInput(new=[new], num_scheduled_tokens={"r": 3})) == StepOutput()
    decode = StepInput(running=[RunningRequest("r", [12], [])], num_scheduled_tokens={"r": 1})
    assert runner.execute(decode) == StepOutput()
    assert runner.decode_graphs.num_replays == Counter({1: 1})


def test_a_follower_step_that_fails_ends_the_rank_with_a_clear_error(stories_dir) -> None:
    runner = FollowerRunner(from_flat(WorkerConfig, model=str(stories_dir), device="cpu",
                                      num_kv_blocks=16))  # fmt: skip

    def broken(*args):
        raise TypeError("'NoneType' object is not subscriptable")

    runner.model.forward = broken
    runner.fused_decode = None  # a 3-token step would run fused, past the broken forward
    new = NewRequest("r", [1, 400, 7], [3], GREEDY_LOGPROBS)
    with pytest.raises(RankFailure, match="rank 1: step failed: TypeError"):
        follow_step(runner, StepInput(new=[new], num_scheduled_tokens={"r": 3}), rank=1)
    # A step every rank refuses alike (an unknown request) is not a failure of the rank.
    refused = StepInput(running=[RunningRequest("x", [5], [])], num_scheduled_tokens={"x": 1})
    follow_step(runner, refused, rank=1)
