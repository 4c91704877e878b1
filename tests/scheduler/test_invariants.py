"""Rules of `Scheduler.schedule` that hold the engine's promises, each tested where it matters:
the step's token budget is never exceeded, a step that preempted for blocks admits nothing and
preempts for nothing else (a step that preempts for share admits in that same step the request
it preempted for), and a prefix-cache hit on blocks nobody holds is paid for out of the free
blocks."""

from __future__ import annotations

from scheduler.request import Request
from tests.scheduler.helpers import ContractWorker, make_request, make_scheduler, step


def test_a_prefill_leaves_one_token_of_the_budget_for_each_running_request_after_it() -> None:
    # Under `priority` an important request mid-prefill runs before three decodes; its chunk
    # must leave them their token each, or the step would schedule 13 + 3 = 16 + 3 tokens.
    sched = make_scheduler(
        num_blocks=64,
        block_size=4,
        queue_policy="priority",
        max_num_batched_tokens=16,
        long_prefill_threshold=16,
        max_num_seqs=4,
    )
    worker = ContractWorker(block_size=4)
    for i in range(3):
        sched.add_request(prioritised(make_request(f"low{i}", 2, max_tokens=40), 5))
    step(sched, worker)  # the three prompts; they decode from now on
    sched.add_request(prioritised(make_request("high", 60, max_tokens=4), 0))
    budgets = []
    for _ in range(5):
        out, _ = step(sched, worker)
        budgets.append(sum(out.step_input.num_scheduled_tokens.values()))
        high = out.step_input.num_scheduled_tokens.get("high", 0)
        assert high < 16, "the prefill must leave tokens for the decodes"
        assert all(out.step_input.num_scheduled_tokens[f"low{i}"] == 1 for i in range(3))
    assert max(budgets) == 16


def prioritised(req: Request, priority: int) -> Request:
    req.priority = priority
    return req


def test_a_step_that_preempts_admits_no_waiting_request() -> None:
    # Two requests fill 8 blocks of 4 tokens; an important small one arrives while no block
    # is free. The step in which a running request needs a block preempts the other, which
    # frees blocks: admitting the small one in that same step would hand them out again
    # while the running ones still lack blocks, and they would preempt each other step after
    # step. It is admitted in the next step instead.
    sched = make_scheduler(num_blocks=8, block_size=4, max_num_seqs=4, queue_policy="priority")
    worker = ContractWorker(block_size=4)
    sched.add_request(prioritised(make_request("a", 6, max_tokens=24), 1))
    sched.add_request(prioritised(make_request("b", 6, max_tokens=24), 1))
    while sched.kv.pool.num_free_blocks:
        step(sched, worker)
    sched.add_request(prioritised(make_request("small", 1, max_tokens=2, first_token=300), 0))
    preempted_at = admitted_at = None
    for i in range(200):
        if not sched.has_unfinished():
            break
        out, _ = step(sched, worker)
        if out.num_preempted and preempted_at is None:
            preempted_at = i
        if any(new.req_id == "small" for new in out.step_input.new):
            admitted_at = i
    assert preempted_at is not None and admitted_at == preempted_at + 1
    assert not sched.has_unfinished()
    assert sched.kv.pool.num_free_blocks == 8


def test_a_step_that_preempts_for_blocks_preempts_no_more_for_share() -> None:
    # alpha holds every seat and block: four 13-token prompts on 16 blocks of 4. Its requests
    # need their fifth blocks in the fifth step; beta arrives just before it, with alpha's
    # quantum run. That step preempts alpha's newest for blocks and stops there: taking
    # another of alpha's for beta would give beta blocks the running ones lack. Beta runs in
    # the next step, in the room left, with no further preemption.
    sched = make_scheduler(
        num_blocks=16, block_size=4, max_num_seqs=4, queue_policy="fair", preemption_quantum=2
    )
    worker = ContractWorker(block_size=4)
    for i in range(6):
        sched.add_request(tenanted(make_request(f"a{i}", 13, max_tokens=40, first_token=20 * i)))
    for _ in range(4):
        out, _ = step(sched, worker)
        assert out.num_preempted == 0
    sched.add_request(tenanted(make_request("b", 3, max_tokens=5, first_token=300), "beta"))
    out, _ = step(sched, worker)
    assert sched.tenant_usage["alpha"].preemptions == {"blocks": 1}
    assert out.num_preempted == 1 and out.step_input.new == []
    out, _ = step(sched, worker)
    assert [new.req_id for new in out.step_input.new] == ["b"] and out.num_preempted == 0
    assert sched.tenant_usage["alpha"].preemptions == {"blocks": 1}


def tenanted(req: Request, tenant: str = "alpha") -> Request:
    req.tenant = tenant
    return req


def test_idle_prefix_hits_count_against_the_free_blocks_before_any_is_taken() -> None:
    # "first" computes a 12-token prompt (three full blocks) and finishes: its blocks are
    # free but still cached. "holder" then holds the two other blocks, so the three free
    # blocks are the cached ones. "second" shares first's 12 leading tokens: it hits those
    # three and needs one block more for its last 4 tokens. 3 + 1 > 3, so it must wait;
    # counting only the new block against the 3 free would take the hits and then find no
    # block left to allocate.
    sched = make_scheduler(num_blocks=5, block_size=4, max_num_batched_tokens=64, max_num_seqs=4)
    worker = ContractWorker(block_size=4)
    sched.add_request(make_request("first", 12, max_tokens=1))
    while sched.has_unfinished():
        step(sched, worker)
    assert sched.kv.pool.num_free_blocks == 5 and sched.kv.pool.num_cached_blocks == 3
    sched.add_request(make_request("holder", 5, max_tokens=3, first_token=200))
    step(sched, worker)
    assert sched.kv.pool.num_free_blocks == 3  # the three cached blocks, idle
    sched.add_request(make_request("second", 16, max_tokens=1))
    out, _ = step(sched, worker)
    assert "second" not in out.step_input.num_scheduled_tokens  # it waits, nothing taken
    assert sched.kv.pool.num_free_blocks == 3
    for _ in range(10):
        if not sched.has_unfinished():
            break
        out, _ = step(sched, worker)
    assert not sched.has_unfinished()
    assert sched.requests == {} and sched.kv.pool.num_free_blocks == 5
    assert sched.kv.num_hits == 12  # second ran, on first's three blocks
