"""The scheduler step without a model: exact block ids, chunking beside decodes, limits."""

from __future__ import annotations

import random

import pytest

from scheduler.errors import CapacityError
from scheduler.request import RequestStatus
from tests.scheduler.helpers import (
    ContractWorker,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)


def test_exact_block_ids_allocated_on_demand_and_freed() -> None:
    sched = make_scheduler(num_blocks=8, block_size=4, enable_prefix_caching=False)
    worker = ContractWorker(block_size=4)
    a = make_request("a", 10, max_tokens=4)
    b = make_request("b", 5, max_tokens=6)
    sched.add_request(a)
    sched.add_request(b)

    out, _ = step(sched, worker)
    assert [(n.req_id, n.block_ids) for n in out.step_input.new] == [
        ("a", [0, 1, 2]),
        ("b", [3, 4]),
    ]
    assert out.step_input.num_scheduled_tokens == {"a": 10, "b": 5}

    # Decodes: a block is added only when a token is about to land in it.
    new_blocks = []
    for _ in range(3):
        out, _ = step(sched, worker)
        new_blocks.append({r.req_id: r.new_block_ids for r in out.step_input.running})
    assert new_blocks == [{"a": [], "b": []}, {"a": [], "b": []}, {"a": [5], "b": []}]
    assert a.status is RequestStatus.FINISHED_LENGTH  # 4 tokens
    assert a.block_ids == []
    # a's blocks went back, last first, to the front of the queue (nothing cached).
    assert sched.kv.pool.free_block_ids() == [0, 1, 2, 5, 6, 7]

    out, _ = step(sched, worker)
    assert out.step_input.finished_req_ids == ["a"]
    assert out.step_input.running[0].new_block_ids == [0]  # b's 9th token
    assert b.block_ids == [3, 4, 0]
    run_to_completion(sched, worker)
    assert sched.kv.pool.num_free_blocks == 8


def test_prefill_chunks_and_decodes_share_a_step() -> None:
    sched = make_scheduler(
        block_size=4, long_prefill_threshold=8, max_num_batched_tokens=64, max_num_seqs=8
    )
    worker = ContractWorker(block_size=4)
    sched.add_request(make_request("decoder", 3, max_tokens=10))
    step(sched, worker)
    sched.add_request(make_request("long", 20, max_tokens=2))

    out, changed = step(sched, worker)
    assert out.step_input.num_scheduled_tokens == {"decoder": 1, "long": 8}
    assert [r.req_id for r in changed] == ["decoder"]  # no token for a half-done prefill
    out, changed = step(sched, worker)
    assert out.step_input.num_scheduled_tokens == {"decoder": 1, "long": 8}
    out, changed = step(sched, worker)
    assert out.step_input.num_scheduled_tokens == {"decoder": 1, "long": 4}
    assert {r.req_id for r in changed} == {"decoder", "long"}


def test_long_prompt_never_stalls_eight_decodes() -> None:
    sched = make_scheduler(
        num_blocks=200,
        block_size=16,
        max_num_seqs=16,
        max_num_batched_tokens=256,
        long_prefill_threshold=512,
    )
    worker = ContractWorker(block_size=16)
    decoders = [make_request(f"d{i}", 10 + i, max_tokens=200) for i in range(8)]
    for req in decoders:
        sched.add_request(req)
    step(sched, worker)
    long = make_request("long", 1000, max_tokens=4, first_token=300)
    sched.add_request(long)
    chunks = []
    while long.num_computed_tokens < 1000:
        out, _ = step(sched, worker)
        scheduled = out.step_input.num_scheduled_tokens
        assert all(scheduled[req.req_id] == 1 for req in decoders)
        assert sum(scheduled.values()) <= 256
        chunks.append(scheduled["long"])
    assert chunks == [248, 248, 248, 248, 8]


def test_budget_and_max_num_seqs_hold_on_a_random_workload() -> None:
    rng = random.Random(7)
    sched = make_scheduler(
        num_blocks=64,
        block_size=4,
        max_num_seqs=6,
        max_num_batched_tokens=32,
        long_prefill_threshold=12,
    )
    worker = ContractWorker(block_size=4)
    reqs = [
        make_request(f"r{i}", rng.randint(1, 60), max_tokens=rng.randint(1, 30)) for i in range(40)
    ]
    for req in reqs[:20]:
        sched.add_request(req)
    outs = []
    for req in reqs[20:]:
        outs.append(step(sched, worker)[0])
        sched.add_request(req)
    outs += run_to_completion(sched, worker)
    for out in outs:
        assert sum(out.step_input.num_scheduled_tokens.values()) <= 32
        assert all(n <= 12 for n in out.step_input.num_scheduled_tokens.values())
    assert max(len(o.step_input.num_scheduled_tokens) for o in outs) == 6
    for req in reqs:
        assert req.status is RequestStatus.FINISHED_LENGTH
        assert len(req.output_token_ids) == req.params.max_tokens
    assert sched.kv.pool.num_free_blocks == 64
    assert sched.num_running == sched.num_waiting == 0


def test_admission_refuses_what_could_never_fit() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4, max_model_len=20)
    # 10 prompt + 7 generated: the last token is never computed, so 16 slots suffice.
    sched.check_fits(10, 7)
    with pytest.raises(CapacityError, match="need 5 KV blocks, the cache has 4"):
        sched.check_fits(10, 8)
    with pytest.raises(ValueError, match=r"maximum model length \(20\)"):
        sched.check_fits(15, 6)


def test_abort_frees_blocks_in_every_state() -> None:
    sched = make_scheduler(num_blocks=8, block_size=4, max_num_seqs=1)
    worker = ContractWorker(block_size=4)
    running = make_request("running", 9)
    waiting = make_request("waiting", 3)
    sched.add_request(running)
    sched.add_request(waiting)
    step(sched, worker)
    assert running.block_ids and not waiting.block_ids
    assert sched.abort_request("running") is running
    assert sched.abort_request("waiting") is waiting
    assert sched.abort_request("unknown") is None
    assert running.status is waiting.status is RequestStatus.FINISHED_ABORTED
    assert sched.kv.pool.num_free_blocks == 8
    assert sched.num_running == sched.num_waiting == 0
    out = sched.schedule()
    assert out.step_input.finished_req_ids == ["running"]  # waiting never reached the worker
    assert not sched.has_unfinished()


def test_tokens_are_counted_per_tenant() -> None:
    sched = make_scheduler(long_prefill_threshold=8)
    worker = ContractWorker(block_size=4)
    for i, (tenant, num_prompt, max_tokens) in enumerate(
        [("t1", 20, 5), ("t1", 3, 2), ("t2", 7, 4)]
    ):
        req = make_request(f"r{i}", num_prompt, max_tokens=max_tokens, first_token=100 * (i + 1))
        req.tenant = tenant
        sched.add_request(req)
    run_to_completion(sched, worker)
    usage = {t: (u.num_input_tokens, u.num_output_tokens) for t, u in sched.tenant_usage.items()}
    assert usage == {"t1": (23, 7), "t2": (7, 4)}


@pytest.mark.parametrize(
    ("policy", "order"), [("fcfs", ["p3", "p0", "p1"]), ("priority", ["p0", "p1", "p3"])]
)
def test_queue_policy_picks_who_is_admitted_next(policy: str, order: list[str]) -> None:
    sched = make_scheduler(max_num_seqs=1, queue_policy=policy)
    worker = ContractWorker(block_size=4)
    for i, priority in enumerate([3, 0, 1]):
        req = make_request(f"p{priority}", 3, max_tokens=1, first_token=100 * (i + 1))
        req.priority = priority
        sched.add_request(req)
    outs = run_to_completion(sched, worker)
    admitted = [new.req_id for out in outs for new in out.step_input.new]
    assert admitted == order
