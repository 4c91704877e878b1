"""n sequences from one prompt: they share its KV blocks (the pool's ref counts say so), a
seeded request is reproducible, usage counts the prompt once, and nothing is left behind."""

from __future__ import annotations

import random

import pytest

from contract.sampling import SamplingParams
from scheduler.engine import Engine
from scheduler.errors import CapacityError
from tests.scheduler.stories import random_prompt, stories_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
BLOCK_SIZE = 16
PROMPT = random_prompt(random.Random(7), 3 * BLOCK_SIZE + 5)  # 3 full blocks and 5 tokens
SAMPLED = {"temperature": 1.0, "ignore_eos": True, "max_tokens": 12}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return stories_engine(num_kv_blocks=64)


def assert_idle(engine: Engine) -> None:
    stats = engine.stats()
    assert not engine.has_unfinished()
    assert (stats.num_running, stats.num_waiting, stats.num_free_blocks) == (0, 0, stats.num_blocks)


def test_n_sequences_share_the_prompt_blocks(engine: Engine) -> None:
    engine.add_request(PROMPT, SamplingParams(n=4, seed=3, **SAMPLED), req_id="four")
    sched = engine.scheduler
    pool = sched.kv.pool
    deltas = []
    while len(sched.running) < 4:
        deltas += engine.step()
        assert engine.has_unfinished()
    tables = [req.block_ids for req in sched.running]
    shared = tables[0][:3]
    assert all(table[:3] == shared for table in tables)  # the prompt's 3 full blocks
    assert [pool.ref_cnts[b] for b in shared] == [4, 4, 4]
    tails = {b for table in tables for b in table[3:]}
    assert len(tails) == sum(len(table) - 3 for table in tables)  # the rest is each one's own
    assert pool.num_blocks - pool.num_free_blocks == 3 + len(tails)  # not 4 x 4
    while engine.has_unfinished():
        deltas += engine.step()
    assert {d.req_id for d in deltas} == {"four"} and {d.index for d in deltas} == {0, 1, 2, 3}
    finals = [d for d in deltas if d.finish_reason is not None]
    assert [d.others_running for d in finals] == [True, True, True, False]
    assert [d.usage is None for d in finals] == [True, True, True, False]
    usage = finals[-1].usage
    assert usage.prompt_tokens == len(PROMPT) and usage.completion_tokens == 4 * 12
    assert_idle(engine)


def test_a_seeded_n_request_is_reproducible_and_its_samples_distinct(engine: Engine) -> None:
    params = SamplingParams(n=4, seed=11, **SAMPLED)
    [first] = engine.generate([PROMPT], params)
    [again] = engine.generate([PROMPT], params)
    texts = [seq.token_ids for seq in first.sequences]
    assert [seq.index for seq in first.sequences] == [0, 1, 2, 3]
    assert len({tuple(t) for t in texts}) == 4
    assert texts == [seq.token_ids for seq in again.sequences]
    # Sequence 0 draws as the same request with n = 1 does; the others differ from it.
    [single] = engine.generate([PROMPT], SamplingParams(seed=11, **SAMPLED))
    assert single.token_ids == texts[0] == first.token_ids
    assert first.usage.completion_tokens == 48 and first.usage.prompt_tokens == len(PROMPT)
    assert_idle(engine)


def test_echo_is_computed_once_and_given_to_every_sequence(engine: Engine) -> None:
    params = SamplingParams(n=3, echo=True, logprobs=True, **SAMPLED)
    engine.add_request(PROMPT, params, req_id="echo")
    deltas = list(engine.iter_deltas())
    echoed = [d for d in deltas if d.prompt_logprobs is not None]
    assert sorted(d.index for d in echoed) == [0, 1, 2]
    assert all(d.prompt_logprobs == echoed[0].prompt_logprobs for d in echoed)
    assert echoed[0].prompt_logprobs[0] is None and None not in echoed[0].prompt_logprobs[1:]
    assert_idle(engine)


def test_aborting_an_n_request_ends_every_sequence(engine: Engine) -> None:
    engine.add_request(PROMPT, SamplingParams(n=5, **SAMPLED, seed=1), req_id="gone")
    deltas = engine.step()  # the leader's prefill; the others wait for its blocks
    assert engine.abort("gone")
    deltas += engine.step()
    finals = [d for d in deltas if d.finish_reason is not None]
    assert sorted(d.index for d in finals) == [0, 1, 2, 3, 4]
    assert {d.finish_reason for d in finals} == {"abort"} and finals[-1].finished
    engine.step()
    assert_idle(engine)
    assert not engine.abort("gone")


def test_sequence_ids_are_taken_while_the_request_lives(engine: Engine) -> None:
    engine.add_request(PROMPT, SamplingParams(n=2, **SAMPLED), req_id="x")
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request([1, 5], SamplingParams(), req_id="x#1")
    list(engine.iter_deltas())
    engine.add_request([1, 5], SamplingParams(max_tokens=2), req_id="x#1")  # free again
    list(engine.iter_deltas())
    assert_idle(engine)


def test_the_queue_cap_counts_every_sequence() -> None:
    engine = stories_engine(num_kv_blocks=64, max_queued_requests=4)
    engine.add_request([1, 5], SamplingParams(n=3, max_tokens=2))
    with pytest.raises(CapacityError, match="cannot take 2 more sequences"):
        engine.add_request([1, 5], SamplingParams(n=2, max_tokens=2))
    engine.add_request([1, 5], SamplingParams(max_tokens=2))
    list(engine.iter_deltas())
    assert_idle(engine)
