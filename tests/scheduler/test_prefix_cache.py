"""Prefix caching in the scheduler: exact shared block ids, salts, echo, the last token."""

from __future__ import annotations

from contract.sampling import SamplingParams
from scheduler.request import Request
from tests.scheduler.helpers import EOS, ContractWorker, make_request, make_scheduler, step


def _with_prompt(
    req_id: str, prompt: list[int], tenant: str = "default", max_tokens: int = 2, **params
) -> Request:
    params = SamplingParams(max_tokens=max_tokens, **params)
    return Request(req_id, prompt, params, eos_ids=(EOS,), tenant=tenant)


def test_second_request_shares_the_computed_full_blocks() -> None:
    sched = make_scheduler(num_blocks=16, block_size=4)
    worker = ContractWorker(block_size=4)
    shared = list(range(10, 18))  # two full blocks
    sched.add_request(_with_prompt("a", shared + [40, 41], max_tokens=10))
    out, _ = step(sched, worker)
    assert out.step_input.new[0].block_ids == [0, 1, 2]

    sched.add_request(_with_prompt("b", shared + [50, 51, 52]))
    out, _ = step(sched, worker)
    new_b = out.step_input.new[0]
    assert (new_b.block_ids, new_b.num_computed_tokens) == ([0, 1, 3], 8)
    assert out.step_input.num_scheduled_tokens["b"] == 3
    assert sched.kv.pool.ref_cnts[0] == 2
    assert (sched.kv.num_queries, sched.kv.num_hits) == (10 + 11, 8)
    assert sched.requests["b"].num_cached_prompt_tokens == 8


def test_an_identical_prompt_still_computes_its_last_token() -> None:
    sched = make_scheduler(num_blocks=16, block_size=4)
    worker = ContractWorker(block_size=4)
    prompt = list(range(10, 18))
    sched.add_request(_with_prompt("a", prompt))
    step(sched, worker)
    sched.add_request(_with_prompt("b", prompt))
    out, _ = step(sched, worker)
    # The worker needs the last prompt token's logits, so only the first block is a hit.
    assert out.step_input.new[0].num_computed_tokens == 4
    assert out.step_input.num_scheduled_tokens["b"] == 4


def test_no_hit_across_tenants_or_for_echo() -> None:
    sched = make_scheduler(num_blocks=32, block_size=4)
    worker = ContractWorker(block_size=4)
    prompt = list(range(10, 22))
    sched.add_request(_with_prompt("a", prompt, tenant="t1"))
    step(sched, worker)
    sched.add_request(_with_prompt("other-tenant", prompt, tenant="t2"))
    sched.add_request(_with_prompt("echo", prompt, tenant="t1", echo=True))
    sched.add_request(_with_prompt("same-tenant", prompt, tenant="t1"))
    out, _ = step(sched, worker)
    computed = {n.req_id: n.num_computed_tokens for n in out.step_input.new}
    assert computed == {"other-tenant": 0, "echo": 0, "same-tenant": 8}


def test_freed_blocks_stay_reusable_until_reallocated() -> None:
    sched = make_scheduler(num_blocks=6, block_size=4)
    worker = ContractWorker(block_size=4)
    prompt = list(range(10, 19))  # 9 tokens: blocks 0, 1 full, 2 partial
    a = _with_prompt("a", prompt)
    sched.add_request(a)
    while not a.is_finished:
        step(sched, worker)
    assert sched.kv.pool.num_free_blocks == 6  # cached blocks count as free
    sched.add_request(_with_prompt("b", prompt))
    out, _ = step(sched, worker)
    assert (out.step_input.new[0].block_ids[:2], out.step_input.new[0].num_computed_tokens) == (
        [0, 1],
        8,
    )


def test_eviction_forgets_the_least_recently_used_prefix() -> None:
    sched = make_scheduler(num_blocks=4, block_size=4)
    worker = ContractWorker(block_size=4)
    first = _with_prompt("first", list(range(10, 15)))  # 5 tokens: 1 full block cached
    sched.add_request(first)
    while not first.is_finished:
        step(sched, worker)
    filler = make_request("filler", 12, max_tokens=2, first_token=200)  # needs every block
    sched.add_request(filler)
    while not filler.is_finished:
        step(sched, worker)
    again = _with_prompt("again", list(range(10, 15)))
    sched.add_request(again)
    out, _ = step(sched, worker)
    assert out.step_input.new[0].num_computed_tokens == 0
    assert sched.kv.num_hits == 0
