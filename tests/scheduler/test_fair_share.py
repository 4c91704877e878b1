"""The fair-share policy (VTC) on scripted backlogs, with hand-made worker outputs.

Every request here has a 4-token prompt and 2 output tokens, so with the default prices
(w_in 1, w_out 2) it costs 4 + 2 * 2 = 8 service units: 8 on the counter of a weight-1
tenant, 4 on that of a weight-2 tenant. With `max_num_seqs=1` one request runs at a time, so
each admission sees the full cost of the one before it.
"""

from __future__ import annotations

import pytest

from scheduler.request import Request, RequestStatus
from scheduler.scheduler import Scheduler
from tests.scheduler.helpers import (
    ContractWorker,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)


def backlog(sched: Scheduler, counts: dict[str, int], num_prompt: int = 4) -> list[Request]:
    """`counts[t]` requests of tenant t, named t1, t2, ..., added tenant after tenant."""
    reqs = []
    for tenant, count in counts.items():
        for i in range(1, count + 1):
            req = make_request(f"{tenant}{i}", num_prompt, max_tokens=2, first_token=7 * len(reqs))
            req.tenant = tenant
            sched.add_request(req)
            reqs.append(req)
    return reqs


def admission_order(sched: Scheduler) -> list[str]:
    outs = run_to_completion(sched, ContractWorker(block_size=4))
    return [new.req_id for out in outs for new in out.step_input.new]


def test_two_tenants_weights_1_to_2_admit_two_of_b_per_one_of_a() -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy="fair")
    sched.tenants.set_weights({"b": 2.0})
    backlog(sched, {"a": 4, "b": 4})
    # Counters (a, b) before each admission: (0, 0) a1, (8, 0) b1, (8, 4) b2, (8, 8) tie to
    # the older head a2, (16, 8) b3, (16, 12) b4; then only a is left.
    assert admission_order(sched) == ["a1", "b1", "b2", "a2", "b3", "b4", "a3", "a4"]
    usage = sched.tenant_usage
    assert (usage["a"].service, usage["b"].service) == (32.0, 32.0)
    assert (usage["a"].counter, usage["b"].counter) == (32.0, 16.0)


def test_three_tenants_weights_1_2_1() -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy="fair")
    sched.tenants.set_weights({"b": 2.0})
    backlog(sched, {"a": 4, "b": 4, "c": 4})
    # a and c pay 8 per request, b 4; ties go to the older head (a's, then b's, then c's).
    assert admission_order(sched) == [
        *("a1", "b1", "c1", "b2", "a2", "b3", "c2", "b4"),
        *("a3", "c3", "a4", "c4"),
    ]


@pytest.mark.parametrize(
    ("policy", "order"),
    [
        ("fcfs", ["a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8", "b1", "b2"]),
        ("fair", ["a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6", "a7", "a8"]),
    ],
)
def test_a_flooding_tenant_takes_everything_under_fcfs_and_its_share_under_fair(
    policy: str, order: list[str]
) -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy=policy)
    backlog(sched, {"a": 8, "b": 2})
    assert admission_order(sched) == order


def test_a_tenant_back_from_idle_is_lifted_and_banks_no_credit() -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy="fair")
    worker = ContractWorker(block_size=4)
    backlog(sched, {"a": 6})
    for _ in range(6):  # a1, a2 and a3 run to the end: a's counter is 24
        step(sched, worker)
    a = sched.tenant_usage["a"]
    assert a.counter == 24.0
    backlog(sched, {"b": 3})
    b = sched.tenant_usage["b"]
    assert b.counter == 24.0  # lifted from 0 to a's, the smallest backlogged counter
    # With its 0 kept, b would run three in a row; lifted, it alternates with a (a4 wins the
    # tie at 24: its head is older).
    outs = run_to_completion(sched, worker)
    assert [n.req_id for o in outs for n in o.step_input.new] == [
        "a4",
        "b1",
        "a5",
        "b2",
        "a6",
        "b3",
    ]


def test_with_nobody_waiting_a_newcomer_is_lifted_to_the_last_tenant_served() -> None:
    sched = make_scheduler(max_num_seqs=4, queue_policy="fair")
    worker = ContractWorker(block_size=4)
    backlog(sched, {"a": 2})
    run_to_completion(sched, worker)
    assert sched.tenant_usage["a"].counter == 16.0
    backlog(sched, {"b": 1})
    assert sched.tenant_usage["b"].counter == 16.0


def test_a_preempted_request_does_not_lift_its_tenant() -> None:
    # c waits (no blocks left) with a large counter; a's preempted request goes back to an
    # empty queue of a's, but a was running all along: a lift to c's 1000 would be wrong.
    sched = make_scheduler(num_blocks=6, block_size=4, queue_policy="fair")
    worker = ContractWorker(block_size=4)
    reqs = backlog(sched, {"a": 2, "b": 1}, num_prompt=8)
    sched.tenants.of("c").counter = 1000.0
    backlog(sched, {"c": 1}, num_prompt=8)
    step(sched, worker)
    step(sched, worker)
    assert [r.req_id for r in reqs if r.status is RequestStatus.PREEMPTED] == ["a2"]
    assert sched.tenant_usage["a"].counter == 16 + 4 + 2  # prompts, first tokens, a1's second


@pytest.mark.parametrize(("policy", "victim"), [("fcfs", "b1"), ("fair", "a2")])
def test_the_victim_is_the_newest_request_of_the_tenant_with_the_largest_counter(
    policy: str, victim: str
) -> None:
    # Three 8-token prompts fill 6 blocks of 4; each first decode needs a new block. a has
    # two requests running (counter 16 + 4 after the first tokens), b one (8 + 2): fair
    # preempts a's newest, though b1 arrived last and is what fcfs gives up.
    sched = make_scheduler(num_blocks=6, block_size=4, queue_policy=policy)
    worker = ContractWorker(block_size=4)
    reqs = backlog(sched, {"a": 2, "b": 1}, num_prompt=8)
    step(sched, worker)
    assert all(r.status is RequestStatus.RUNNING for r in reqs)
    step(sched, worker)
    assert [r.req_id for r in reqs if r.status is RequestStatus.PREEMPTED] == [victim]
    run_to_completion(sched, worker)
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in reqs)
    assert sched.kv.pool.num_free_blocks == 6


def test_priority_orders_requests_within_a_tenant_never_across_tenants() -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy="fair")
    for name, tenant, priority in (("a1", "a", 0), ("a2", "a", 0), ("a3", "a", -1), ("b1", "b", 5)):
        req = make_request(name, 4, max_tokens=2)
        req.tenant, req.priority = tenant, priority
        sched.add_request(req)
    # a3 jumps a's own queue; b1's low priority does not keep it behind a's requests.
    assert admission_order(sched) == ["a3", "b1", "a1", "a2"]


def test_weights_are_validated_and_tenants_not_named_weigh_one() -> None:
    sched = make_scheduler(queue_policy="fair")
    with pytest.raises(ValueError, match="weight of tenant 'a' must be > 0, got 0"):
        sched.tenants.set_weights({"a": 0})
    sched.tenants.set_weights({"a": 3})
    backlog(sched, {"a": 1, "b": 1})
    assert (sched.tenant_usage["a"].weight, sched.tenant_usage["b"].weight) == (3.0, 1.0)
    sched.tenants.set_weights({})
    assert sched.tenant_usage["a"].weight == 1.0


def test_aborting_a_waiting_request_leaves_the_queue_consistent() -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy="fair")
    backlog(sched, {"a": 2, "b": 2})
    assert sched.abort_request("b1") is not None and sched.abort_request("b2") is not None
    assert sched.num_waiting == 2
    assert admission_order(sched) == ["a1", "a2"]
    assert sched.tenant_usage["b"].num_unfinished == 0


@pytest.mark.parametrize("policy", ["fair", "priority", "deadline"])
def test_requests_taken_out_of_the_queue_are_never_admitted(policy: str) -> None:
    # Taking a waiting request out leaves its entry in the heap, to be skipped when it comes
    # up: the queue must still count, peek and admit only what is waiting.
    sched = make_scheduler(max_num_seqs=1, queue_policy=policy)
    reqs = backlog(sched, {"a": 4, "b": 3})
    for name in ("a1", "a3", "b1", "b2", "b3"):
        assert sched.abort_request(name) is not None
    assert sched.abort_request("a1") is None  # not live any more
    assert sched.num_waiting == 2
    assert admission_order(sched) == ["a2", "a4"]
    assert [r.status for r in reqs].count(RequestStatus.FINISHED_ABORTED) == 5
