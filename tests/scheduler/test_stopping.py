"""Token-level stop conditions and echo prompt logprobs, applied in Scheduler.update."""

from __future__ import annotations

import pytest

from scheduler.request import RequestStatus
from tests.scheduler.helpers import (
    EOS,
    ContractWorker,
    make_request,
    make_scheduler,
    run_to_completion,
)


def _run(next_token, **params):
    sched = make_scheduler()
    worker = ContractWorker(block_size=4, next_token=next_token)
    req = make_request("r", 5, **params)
    sched.add_request(req)
    run_to_completion(sched, worker)
    return req


def _eos_at(output_index: int):
    """A worker that samples EOS as the output_index-th token (prompt of 5 tokens)."""
    return lambda req_id, pos: EOS if pos == 5 + output_index else 7


def test_eos_stops_and_is_kept_as_the_last_token() -> None:
    req = _run(_eos_at(2), max_tokens=10)
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.output_token_ids == [7, 7, EOS]


def test_ignore_eos_runs_to_max_tokens() -> None:
    req = _run(_eos_at(2), max_tokens=6, ignore_eos=True)
    assert req.status is RequestStatus.FINISHED_LENGTH
    assert req.output_token_ids == [7, 7, EOS, 7, 7, 7]


def test_min_tokens_holds_back_eos_and_stop_ids() -> None:
    req = _run(_eos_at(2), max_tokens=10, min_tokens=5)
    assert req.status is RequestStatus.FINISHED_LENGTH
    assert len(req.output_token_ids) == 10
    req = _run(
        lambda req_id, pos: 9 if pos >= 6 else 7, max_tokens=10, min_tokens=4, stop_token_ids=[9]
    )
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.output_token_ids == [7, 9, 9, 9]


def test_stop_token_id_stops() -> None:
    req = _run(lambda req_id, pos: 9 if pos == 7 else 7, max_tokens=10, stop_token_ids=[9])
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.output_token_ids == [7, 7, 9]


def test_max_model_len_ends_the_request() -> None:
    sched = make_scheduler(max_model_len=12)
    worker = ContractWorker(block_size=4)
    req = make_request("r", 5, max_tokens=7)
    sched.add_request(req)
    run_to_completion(sched, worker)
    assert req.status is RequestStatus.FINISHED_LENGTH
    assert req.num_tokens == 12


@pytest.mark.parametrize("preempt", [False, True])
def test_echo_prompt_logprobs_assembled_by_position(preempt: bool) -> None:
    # Chunks of 4; with preemption the prompt is computed again, and repeats are ignored.
    sched = make_scheduler(num_blocks=5 if preempt else 64, block_size=4, long_prefill_threshold=4)
    worker = ContractWorker(block_size=4)
    # Both need 4 blocks of the 5; the echo request, newer, is the one preempted.
    sched.add_request(make_request("older", 1, max_tokens=14, first_token=300))
    echo = make_request("echo", 10, max_tokens=6, echo=True)
    sched.add_request(echo)
    run_to_completion(sched, worker)
    assert echo.status is RequestStatus.FINISHED_LENGTH
    assert (echo.num_preemptions > 0) == preempt
    # The worker here reports -position as the logprob of the token at that position.
    assert echo.prompt_logprobs == [None] + [-float(p) for p in range(1, 10)]


def test_a_worker_that_samples_nothing_fails_the_request_not_the_loop() -> None:
    sched = make_scheduler()
    req = make_request("r", 3)
    sched.add_request(req)
    out = sched.schedule()
    changed = sched.update(out, worker_output_without_samples(out))
    assert changed == [req] and req.status is RequestStatus.FINISHED_ERROR
    assert "sampled no token" in req.error
    assert sched.kv.pool.num_free_blocks == 64


def worker_output_without_samples(out):
    from contract.step import StepOutput

    req_ids = list(out.step_input.num_scheduled_tokens)
    return StepOutput(req_ids=req_ids, sampled_token_ids=[[] for _ in req_ids])
