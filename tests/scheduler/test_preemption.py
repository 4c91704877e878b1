"""Preemption by recompute when blocks run out: the right victim, and it comes back."""

from __future__ import annotations

from scheduler.request import RequestStatus
from tests.scheduler.helpers import (
    ContractWorker,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)


def _three_full_requests(policy: str, priorities: tuple[int, int, int], num_blocks: int = 6):
    """Three 8-token prompts that fill 6 blocks of 4; each first decode needs a new block."""
    sched = make_scheduler(num_blocks=num_blocks, block_size=4, queue_policy=policy)
    worker = ContractWorker(block_size=4)
    reqs = [
        make_request(name, 8, max_tokens=3, first_token=100 * (i + 1))
        for i, name in enumerate("abc")
    ]
    for req, priority in zip(reqs, priorities, strict=True):
        req.priority = priority
    for req in reqs:
        sched.add_request(req)
    out, _ = step(sched, worker)
    assert sched.kv.pool.num_free_blocks == num_blocks - 6
    return sched, worker, reqs


def test_fcfs_preempts_the_newest_and_resumes_it_with_its_output() -> None:
    sched, worker, (a, b, c) = _three_full_requests("fcfs", (0, 0, 0))
    out, _ = step(sched, worker)
    assert c.status is RequestStatus.PREEMPTED
    assert sched.num_preemptions == 1 and c.num_preemptions == 1
    assert set(out.step_input.num_scheduled_tokens) == {"a", "b"}
    assert c.block_ids == [] and c.num_computed_tokens == 0
    assert out.step_input.finished_req_ids == ["c"]  # the worker drops it in the same step
    c_first_token = c.output_token_ids[0]

    outs = run_to_completion(sched, worker)
    resumed = [n for o in outs for n in o.step_input.new if n.req_id == "c"]
    assert len(resumed) == 1
    # Everything known so far travels again: the prompt and the token generated before.
    assert resumed[0].prompt_token_ids == c.prompt_token_ids + [c_first_token]
    assert resumed[0].num_output_tokens == 1  # so the worker counts it towards min_tokens
    for req in (a, b, c):
        assert req.status is RequestStatus.FINISHED_LENGTH
        assert len(req.output_token_ids) == 3
    assert sched.kv.pool.num_free_blocks == 6
    # The tenant is charged c's prompt twice: recomputing is service too.
    usage = sched.tenant_usage["default"]
    assert (usage.num_input_tokens, usage.num_output_tokens) == (4 * 8, 3 * 3)


def test_priority_policy_preempts_the_least_important_even_if_oldest() -> None:
    # a is oldest but least important (highest number): it loses, not c.
    sched, worker, (a, b, c) = _three_full_requests("priority", (5, 1, 0))
    assert [r.req_id for r in sched.running] == ["c", "b", "a"]
    step(sched, worker)
    assert a.status is RequestStatus.PREEMPTED
    assert b.status is c.status is RequestStatus.RUNNING
    run_to_completion(sched, worker)
    assert a.status is RequestStatus.FINISHED_LENGTH and len(a.output_token_ids) == 3


def test_victim_resumes_from_its_prefix_still_in_the_cache() -> None:
    # One spare block: a takes it; b then preempts c, whose blocks go back last first, so
    # b takes c's second block and c's first stays cached.
    sched, worker, (a, b, c) = _three_full_requests("fcfs", (0, 0, 0), num_blocks=7)
    c_blocks = list(c.block_ids)
    step(sched, worker)
    assert c.status is RequestStatus.PREEMPTED
    assert b.block_ids[-1] == c_blocks[1]
    outs = run_to_completion(sched, worker)
    resumed = next(n for o in outs for n in o.step_input.new if n.req_id == "c")
    assert resumed.num_computed_tokens == 4
    assert resumed.block_ids[0] == c_blocks[0]
    assert c.status is RequestStatus.FINISHED_LENGTH


def test_a_request_that_alone_lacks_blocks_preempts_itself_and_waits() -> None:
    # a (oldest) decodes into new blocks; b, the newest, gets preempted, not a.
    sched = make_scheduler(num_blocks=4, block_size=4)
    worker = ContractWorker(block_size=4)
    a = make_request("a", 4, max_tokens=9)
    b = make_request("b", 4, max_tokens=9, first_token=200)
    sched.add_request(a)
    sched.add_request(b)
    run_to_completion(sched, worker)
    assert b.num_preemptions >= 1 and a.num_preemptions == 0
    assert len(a.output_token_ids) == len(b.output_token_ids) == 9
    assert sched.kv.pool.num_free_blocks == 4
