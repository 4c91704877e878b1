"""Preemption for share and priority, with the contract-checking fake worker: a waiting request
that finds no room takes the place of a running one its policy ranks below it, after that one's
quantum; outputs stay those of uninterrupted runs and no block leaks."""

from __future__ import annotations

import random

import pytest

from scheduler.request import Request, RequestStatus
from scheduler.scheduler import Scheduler
from tests.scheduler.helpers import (
    ContractWorker,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
    token_of_context,
)


def tenant_request(name: str, tenant: str, num_prompt: int, max_tokens: int, first: int) -> Request:
    req = make_request(name, num_prompt, max_tokens=max_tokens, first_token=first)
    req.tenant = tenant
    return req


def flood(policy: str, **config: object) -> tuple[Scheduler, ContractWorker, list[Request]]:
    """alpha's six requests of 13 prompt tokens on 16 blocks of 4 and 4 seats: after the first
    step four of them hold every seat and every block (4 blocks each), two wait, and none
    needs a new block for three more steps (their fourth blocks have 3 free slots)."""
    sched = make_scheduler(
        num_blocks=16, block_size=4, max_num_seqs=4, queue_policy=policy, **config
    )
    worker = ContractWorker(block_size=4, from_context=token_of_context)
    alpha = [tenant_request(f"a{i}", "alpha", 13, 40, 20 * i) for i in range(6)]
    for req in alpha:
        sched.add_request(req)
    step(sched, worker)
    step(sched, worker)  # each running request has two output tokens: its quantum of 2
    assert sched.kv.pool.num_free_blocks == 0 and sched.num_running == 4
    return sched, worker, alpha


@pytest.mark.parametrize("policy", ["fair", "fcfs"])
def test_a_light_tenant_runs_within_one_step_under_fair_and_waits_under_fcfs(policy: str) -> None:
    sched, worker, alpha = flood(policy, preemption_quantum=2)
    beta = tenant_request("b0", "beta", 3, 5, 300)
    sched.add_request(beta)
    out, _ = step(sched, worker)
    if policy == "fcfs":
        assert beta.status is RequestStatus.WAITING and out.num_preempted == 0
        outs = run_to_completion(sched, worker)
        admitted = [new.req_id for o in outs for new in o.step_input.new]
        assert admitted.index("b0") > admitted.index("a5")  # behind all of alpha's
    else:
        assert [new.req_id for new in out.step_input.new] == ["b0"]
        # The victim is alpha's newest running request; it leaves this step's batch.
        assert alpha[3].status is RequestStatus.PREEMPTED
        assert alpha[3].preemptions == {"share": 1}
        assert "a3" not in out.step_input.num_scheduled_tokens
        assert out.step_input.finished_req_ids == ["a3"]
        assert sched.tenant_usage["alpha"].preemptions == {"share": 1}
        run_to_completion(sched, worker)
    assert beta.status is RequestStatus.FINISHED_LENGTH
    assert all(req.status is RequestStatus.FINISHED_LENGTH for req in alpha)
    assert sched.kv.pool.num_free_blocks == 16
    assert all(usage.num_running == 0 for usage in sched.tenant_usage.values())


def test_no_victim_before_its_quantum_and_none_without_policy_preemption() -> None:
    sched, worker, _ = flood("fair", preemption_quantum=3)  # two tokens out of three
    sched.add_request(tenant_request("b0", "beta", 3, 5, 300))
    out, _ = step(sched, worker)
    assert out.num_preempted == 0 and out.step_input.new == []
    out, _ = step(sched, worker)  # three now: b0 takes a3's place
    assert [new.req_id for new in out.step_input.new] == ["b0"]

    sched, worker, _ = flood("fair", preemption_quantum=2, policy_preemption=False)
    sched.add_request(tenant_request("b0", "beta", 3, 5, 300))
    for _ in range(2):  # the third would preempt for blocks: alpha's fifth blocks
        out, _ = step(sched, worker)
        assert out.step_input.new == [] and out.num_preempted == 0


def test_priority_takes_the_place_of_the_least_important_never_of_an_equal() -> None:
    sched = make_scheduler(num_blocks=64, max_num_seqs=2, queue_policy="priority")
    assert sched.config.preemption_quantum == 16  # the default
    worker = ContractWorker(block_size=4, from_context=token_of_context)
    low = make_request("low", 4, max_tokens=60)
    mid = make_request("mid", 4, max_tokens=60, first_token=100)
    low.priority, mid.priority = 5, 3
    sched.add_request(low)
    sched.add_request(mid)
    for _ in range(16):
        step(sched, worker)
    equal = make_request("equal", 4, max_tokens=4, first_token=200)
    equal.priority = 5
    sched.add_request(equal)
    out, _ = step(sched, worker)
    assert out.step_input.new == []  # an equal priority waits its turn
    high = make_request("high", 4, max_tokens=4, first_token=300)
    high.priority = 0
    sched.add_request(high)
    out, _ = step(sched, worker)
    assert [new.req_id for new in out.step_input.new] == ["high"]
    assert low.preemptions == {"priority": 1} and mid.num_preemptions == 0
    run_to_completion(sched, worker)
    assert sched.kv.pool.num_free_blocks == 64


@pytest.mark.parametrize("quantum", [1, 8])
def test_the_quantum_keeps_two_backlogged_tenants_from_preempting_each_other_every_step(
    quantum: int,
) -> None:
    # One seat, two tenants with long requests waiting: fair share hands the seat back and
    # forth. Each hand-over must wait for the quantum of the request holding the seat.
    sched = make_scheduler(
        num_blocks=64, max_num_seqs=1, queue_policy="fair", preemption_quantum=quantum
    )
    worker = ContractWorker(block_size=4, from_context=token_of_context)
    for i in range(3):
        sched.add_request(tenant_request(f"a{i}", "a", 4, 200, 10 * i))
        sched.add_request(tenant_request(f"b{i}", "b", 4, 200, 100 + 10 * i))
    num_steps, num_preempted = 64, 0
    runs: list[int] = []  # tokens each request generated between its admission and preemption
    for _ in range(num_steps):
        running = list(sched.running)
        out, _ = step(sched, worker)
        num_preempted += out.num_preempted
        for req in running:
            if req.status is RequestStatus.PREEMPTED:
                runs.append(len(req.output_token_ids) - req.num_output_tokens_at_admission)
    assert num_preempted == len(runs) > 0
    if quantum == 1:
        assert num_preempted >= num_steps // 2  # without a quantum they trade every step or two
    else:
        assert min(runs) >= quantum
        assert num_preempted <= num_steps // quantum + 1
    served = {t: sched.tenant_usage[t].num_output_tokens for t in "ab"}
    assert abs(served["a"] - served["b"]) <= 2 * quantum  # fair all the same


def test_tenants_holding_an_even_split_of_the_seats_do_not_trade_them() -> None:
    # alpha holds both seats with three long requests; beta's one request takes one seat.
    # Then each holds one: beta's counter soon passes alpha's (its prompt was charged too),
    # yet alpha taking the seat back would leave beta none, so it does not, quantum or not.
    sched = make_scheduler(
        num_blocks=128, max_num_seqs=2, queue_policy="fair", preemption_quantum=2
    )
    worker = ContractWorker(block_size=4, from_context=token_of_context)
    for i in range(3):
        sched.add_request(tenant_request(f"a{i}", "alpha", 8, 60, 10 * i))
    for _ in range(3):
        step(sched, worker)
    beta = tenant_request("b", "beta", 20, 60, 300)
    sched.add_request(beta)
    num_ahead = 0
    while not beta.is_finished:
        step(sched, worker)
        alpha, beta_usage = sched.tenant_usage["alpha"], sched.tenant_usage["beta"]
        if beta_usage.counter > alpha.counter and not beta.is_finished:
            num_ahead += 1
            assert beta.status is RequestStatus.RUNNING  # ahead, yet keeps its one seat
    assert num_ahead > 10
    assert alpha.preemptions == {"share": 1} and beta.num_preemptions == 0
    run_to_completion(sched, worker)
    assert sched.kv.pool.num_free_blocks == 128


def run_alone(req: Request) -> list[int]:
    sched = make_scheduler(num_blocks=256, block_size=4, max_num_seqs=1)
    alone = make_request(req.req_id, 1, max_tokens=req.params.max_tokens)
    alone.prompt_token_ids = alone.all_token_ids = list(req.prompt_token_ids)
    sched.add_request(alone)
    run_to_completion(sched, ContractWorker(block_size=4, from_context=token_of_context))
    return alone.output_token_ids


@pytest.mark.parametrize("policy", ["fair", "priority"])
def test_preempted_outputs_equal_uninterrupted_runs_and_no_block_leaks(policy: str) -> None:
    # Three tenants arriving over time on a cache that cannot hold them all: preemptions for
    # blocks and for share or priority mix. Tokens depend on their whole context, so a
    # request resumed from the wrong tokens or blocks would diverge from its run alone.
    rng = random.Random(7)
    sched = make_scheduler(
        num_blocks=40, block_size=4, max_num_seqs=6, queue_policy=policy, preemption_quantum=3
    )
    worker = ContractWorker(block_size=4, from_context=token_of_context)
    arrivals: dict[int, list[Request]] = {}
    reqs = []
    for i in range(30):
        tenant = rng.choice(["a", "a", "a", "b", "c"])
        req = tenant_request(f"{tenant}{i}", tenant, rng.randint(1, 30), rng.randint(1, 30), 7 * i)
        req.priority = rng.randint(0, 3)
        arrivals.setdefault(rng.randint(0, 60), []).append(req)
        reqs.append(req)
    causes: dict[str, int] = {}
    for t in range(10_000):
        for req in arrivals.get(t, []):
            sched.add_request(req)
        if t > 60 and not sched.has_unfinished():
            break
        before = {r.req_id: dict(r.preemptions) for r in reqs}
        out, _ = step(sched, worker)
        step_causes = {
            cause
            for r in reqs
            for cause, n in r.preemptions.items()
            if n > before[r.req_id].get(cause, 0)
        }
        for cause in step_causes:
            causes[cause] = causes.get(cause, 0) + 1
        if "blocks" in step_causes:  # the rule: such a step admits nothing, preempts no more
            assert step_causes == {"blocks"} and out.step_input.new == []
        elif step_causes:  # preempted for share or priority: to admit, in this same step
            assert out.step_input.new
    assert {"blocks", "priority" if policy == "priority" else "share"} <= set(causes)
    for req in reqs:
        assert req.status is RequestStatus.FINISHED_LENGTH
        assert req.output_token_ids == run_alone(req), req.req_id
    assert sched.kv.pool.num_free_blocks == 40 and sched.requests == {}
    assert all(usage.num_running == 0 for usage in sched.tenant_usage.values())
