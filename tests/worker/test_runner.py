"""The step contract as the scheduler relies on it, checked on stories260K against the oracle."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from contract.sampling import SamplingParams
from contract.step import NewRequest, RunningRequest, StepInput
from tests.conftest import REPO_ROOT
from tests.worker.dense_reference import dense_logits
from tests.worker.driver import GREEDY, Driver, generate_alone, read_meta_model, start_worker

PROMPT = [1, 403, 14, 292, 77, 5, 498, 260, 261, 13, 51, 300, 120, 9, 33, 240, 17, 88, 2, 310]


@pytest.fixture(scope="module")
def stories(stories_dir):
    return read_meta_model(stories_dir)


@pytest.fixture(scope="module")
def worker(stories):
    return start_worker(stories.model_dir, block_size=4, num_kv_blocks=128)


def oracle_logprobs(stories, token_ids: list[int]) -> torch.Tensor:
    return torch.log_softmax(dense_logits(stories.weights, stories.params, token_ids), dim=-1)


def test_info_describes_the_loaded_model(worker):
    info = worker.info()
    assert info.model_name == "stories260K"
    assert (info.vocab_size, info.max_seq_len, info.bos_id, info.eos_id) == (512, 512, 1, 2)
    assert (info.block_size, info.num_kv_blocks) == (4, 128)
    assert (info.dtype, info.device) == ("float32", "cpu")


def test_kv_cache_is_sized_from_a_memory_budget(stories):
    # 5 layers x K and V x 4 tokens x 4 KV heads x head_dim 8 x 4 bytes = 5120 bytes a block.
    worker = start_worker(
        stories.model_dir, block_size=4, num_kv_blocks=None, kv_cache_memory=5120 * 10 + 100
    )
    assert worker.info().num_kv_blocks == 10
    assert worker.kv_cache.capacity_tokens == 40


def test_default_cpu_kv_cache_holds_256_full_length_sequences(stories):
    # stories260K's 1 GiB default would be ~800k tokens it can never use at 512 per sequence.
    worker = start_worker(stories.model_dir, num_kv_blocks=None)
    assert worker.info().num_kv_blocks == 256 * 512 // 16


def test_mid_prefill_returns_nothing_and_the_last_chunk_samples(worker, stories):
    driver = Driver(worker)
    seq = driver.add("a", PROMPT, GREEDY, max_new_tokens=2)
    chunks = []
    while not seq.done:
        out = driver.step(chunk_of=lambda s: 6)
        chunks.append(out.sampled_token_ids[0])
    assert chunks[:3] == [[], [], []]  # 20 prompt tokens in chunks of 6, 6, 6, 2
    expected = int(dense_logits(stories.weights, stories.params, PROMPT)[-1].argmax())
    assert chunks[3] == [expected]
    assert len(chunks) == 5
    driver.finish()


def test_echo_logprobs_cover_every_prompt_position_across_chunks(worker, stories):
    driver = Driver(worker)
    options = SamplingParams(temperature=0.0, echo=True, logprobs=True, top_logprobs=3)
    seq = driver.add("echo", PROMPT, options, max_new_tokens=3)
    starts = []
    while not seq.done:
        out = driver.step(chunk_of=lambda s: 7)
        if "echo" in out.prompt_logprobs:
            starts.append(out.prompt_logprobs["echo"].start_position)
    assert starts == [1, 8, 15]  # chunks [0, 7), [7, 14), [14, 20)
    assert sorted(seq.prompt_logprobs) == list(range(1, len(PROMPT)))

    expected = oracle_logprobs(stories, seq.token_ids)
    for position, logprob in seq.prompt_logprobs.items():
        assert abs(logprob - expected[position - 1, PROMPT[position]].item()) < 1e-4
        top = seq.prompt_top_logprobs[position]
        best = expected[position - 1].topk(3)
        assert [t for t, _ in top] == best.indices.tolist()
        assert all(abs(lp - e) < 1e-4 for (_, lp), e in zip(top, best.values.tolist(), strict=True))
    # Sampled tokens: their logprob and top-3 under the raw distribution, greedy = top-1.
    for i, token in enumerate(seq.output_ids):
        row = expected[len(PROMPT) - 1 + i]
        assert token == int(row.argmax())
        assert abs(seq.logprobs[i] - row[token].item()) < 1e-4
        assert [t for t, _ in seq.top_logprobs[i]] == row.topk(3).indices.tolist()


def test_requests_that_did_not_ask_get_no_logprobs(worker):
    seq = generate_alone(worker, PROMPT, GREEDY, max_new_tokens=3)
    assert seq.logprobs == [] and seq.top_logprobs == [] and seq.prompt_logprobs == {}


def test_prefix_cache_hit_starts_at_the_computed_tokens(worker):
    alone = generate_alone(worker, PROMPT, GREEDY, max_new_tokens=8).output_ids
    driver = Driver(worker)
    first = driver.add("first", PROMPT[:12], GREEDY, max_new_tokens=1)
    driver.run()
    # The 3 full blocks (12 tokens) of the finished request still hold its K/V; a request
    # with the same prefix starts after them. Had the worker started at 0 instead, its first
    # step would end mid-prompt and sample nothing, which the driver rejects.
    hit = driver.add("hit", PROMPT, GREEDY, max_new_tokens=8)
    driver.reuse_blocks(hit, first.block_ids[:3])
    assert hit.num_computed == 12
    driver.run()
    assert hit.output_ids == alone


@pytest.mark.slow
def test_resumed_request_recomputes_and_continues_identically(worker):
    alone = generate_alone(worker, PROMPT, GREEDY, max_new_tokens=12).output_ids
    driver = Driver(worker)
    seq = driver.add("p", PROMPT, GREEDY, max_new_tokens=12)
    for _ in range(6):
        driver.step(chunk_of=lambda s: 8)
    driver.preempt("p")  # the resumed prompt now carries the outputs generated so far
    driver.run(chunk_of=lambda s: 5)
    assert seq.output_ids == alone


def test_output_follows_the_schedule_order_and_unscheduled_requests_keep_state(worker):
    alone_a = generate_alone(worker, PROMPT, GREEDY, max_new_tokens=2).output_ids
    alone_b = generate_alone(worker, PROMPT[:9], GREEDY, max_new_tokens=3).output_ids
    out = worker.execute(
        StepInput(
            new=[
                NewRequest("a", PROMPT, [0, 1, 2, 3, 4, 5], GREEDY),
                NewRequest("b", PROMPT[:9], [10, 11, 12, 13], GREEDY),
            ],
            num_scheduled_tokens={"a": 20, "b": 9},
        )
    )
    assert out.req_ids == ["a", "b"]
    [[a1], [b1]] = out.sampled_token_ids
    # Only b runs; a stays on the worker untouched.
    out = worker.execute(
        StepInput(running=[RunningRequest("b", [b1], [])], num_scheduled_tokens={"b": 1})
    )
    assert out.req_ids == ["b"]
    [[b2]] = out.sampled_token_ids
    out = worker.execute(
        StepInput(
            running=[RunningRequest("b", [b2], []), RunningRequest("a", [a1], [])],
            num_scheduled_tokens={"b": 1, "a": 1},
            finished_req_ids=["never-seen"],
        )
    )
    assert out.req_ids == ["b", "a"]
    [[b3], [a2]] = out.sampled_token_ids
    assert [a1, a2] == alone_a
    assert [b1, b2, b3] == alone_b
    worker.execute(StepInput(finished_req_ids=["a", "b"]))


def test_scheduler_mistakes_are_refused_with_a_clear_error(worker):
    with pytest.raises(ValueError, match="not on this worker"):
        worker.execute(StepInput(num_scheduled_tokens={"ghost": 1}))
    new = NewRequest("x", PROMPT, [0, 1], GREEDY)
    with pytest.raises(ValueError, match="cannot hold"):
        worker.execute(StepInput(new=[new], num_scheduled_tokens={"x": 9}))
    with pytest.raises(ValueError, match="left to compute"):
        worker.execute(StepInput(new=[new], num_scheduled_tokens={"x": 21}))
    with pytest.raises(ValueError, match="block ids"):
        worker.execute(StepInput(new=[NewRequest("y", PROMPT, [128], GREEDY)]))


def test_importing_the_contract_does_not_import_torch():
    code = "import sys, worker, contract.step, worker.config; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "False"
