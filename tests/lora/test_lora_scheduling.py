"""The scheduler with LoRA adapters, without a model: prefix-cache blocks are never shared
across adapters (nor between an adapter and the base model), and a step runs at most
max_loras distinct adapters while base-model requests keep flowing."""

from __future__ import annotations

from contract.sampling import SamplingParams
from contract.step import LoraRef
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.scheduler import Scheduler
from tests.scheduler.helpers import EOS, ContractWorker, step
from worker.config import CacheConfig

SQL = LoraRef(1, "sql", "/adapters/sql")
CHAT = LoraRef(2, "chat", "/adapters/chat")
SQL_RELOADED = LoraRef(3, "sql", "/adapters/sql")  # the same name loaded again


def _request(req_id: str, prompt: list[int], lora: LoraRef | None, max_tokens: int = 4) -> Request:
    params = SamplingParams(max_tokens=max_tokens)
    return Request(req_id, prompt, params, eos_ids=(EOS,), lora=lora)


def _scheduler(max_loras: int, **config: object) -> Scheduler:
    settings = SchedulerConfig(**config)
    return Scheduler(settings, CacheConfig(block_size=4), 64, 4096, max_loras=max_loras)


def test_prefix_cache_hits_never_come_from_another_adapters_blocks() -> None:
    sched = _scheduler(max_loras=4)
    worker = ContractWorker(block_size=4)
    prompt = list(range(10, 22))  # three full blocks
    sched.add_request(_request("sql-1", prompt + [40], SQL, max_tokens=8))
    out, _ = step(sched, worker)
    assert out.step_input.new[0].num_computed_tokens == 0

    # The same prompt on another adapter, on the base model, on a reload of "sql": all miss.
    for req_id, lora in (("chat", CHAT), ("base", None), ("sql-reloaded", SQL_RELOADED)):
        sched.add_request(_request(req_id, prompt + [41], lora))
        out, _ = step(sched, worker)
        [new] = out.step_input.new
        assert (new.req_id, new.num_computed_tokens, new.lora) == (req_id, 0, lora)
        assert not set(new.block_ids) & set(sched.requests["sql-1"].block_ids)

    # The same adapter load hits its own three blocks.
    sched.add_request(_request("sql-2", prompt + [42], SQL))
    out, _ = step(sched, worker)
    [new] = out.step_input.new
    assert new.num_computed_tokens == 12
    assert new.block_ids[:3] == sched.requests["sql-1"].block_ids[:3]


def test_a_step_runs_at_most_max_loras_distinct_adapters() -> None:
    sched = _scheduler(max_loras=2)
    worker = ContractWorker(block_size=4)
    adapters = [LoraRef(i, f"a{i}", f"/a{i}") for i in (1, 2, 3)]
    sched.add_request(_request("r1", [5, 6, 7], adapters[0], max_tokens=3))
    sched.add_request(_request("r2", [5, 6, 8], adapters[1], max_tokens=6))
    sched.add_request(_request("r3", [5, 6, 9], adapters[2], max_tokens=3))
    sched.add_request(_request("r4", [5, 6, 9], adapters[0], max_tokens=3))
    seen_together: list[set[int]] = []
    while sched.has_unfinished():
        out, _ = step(sched, worker)
        loras = {r.lora.lora_id for r in out.scheduled if r.lora is not None}
        assert len(loras) <= 2
        seen_together.append(loras)
    # r3 waited at the head of the queue for r1's adapter to leave; r4 (adapter 1) behind it.
    assert seen_together[0] == {1, 2}
    assert {3} <= set().union(*seen_together)
    assert all(not ({1, 3} <= s) for s in seen_together)


def test_base_model_requests_are_not_held_by_the_adapter_cap() -> None:
    sched = _scheduler(max_loras=1)
    worker = ContractWorker(block_size=4)
    sched.add_request(_request("a", [5, 6, 7], SQL, max_tokens=5))
    sched.add_request(_request("base", [5, 6, 8], None))
    out, _ = step(sched, worker)
    assert [r.req_id for r in out.scheduled] == ["a", "base"]
