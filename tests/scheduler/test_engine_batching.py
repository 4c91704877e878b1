"""The engine over stories260K: batching, chunking and preemption leave outputs unchanged."""

from __future__ import annotations

import random

import pytest

from contract.sampling import SamplingParams
from tests.conftest import STORIES_DIR
from tests.scheduler.stories import random_prompt, stories_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREEDY = {"temperature": 0.0, "ignore_eos": True}


def test_greedy_from_bos_reproduces_the_published_text() -> None:
    engine = stories_engine()
    out = engine.generate([[1]], SamplingParams(max_tokens=256, **GREEDY))[0]
    assert out.text == (STORIES_DIR / "greedy_from_bos_256.txt").read_text()
    assert (out.finish_reason, out.usage.completion_tokens) == ("length", 256)


@pytest.mark.slow
def test_64_requests_under_preemption_equal_each_request_run_alone() -> None:
    rng = random.Random(0)
    prompts = [random_prompt(rng, rng.randint(1, 400)) for _ in range(64)]
    params = [SamplingParams(max_tokens=rng.randint(1, 24), **GREEDY) for _ in prompts]
    # 48 blocks of 16 = 768 slots for prompts averaging 200 tokens: preemption must happen.
    engine = stories_engine(num_kv_blocks=48, long_prefill_threshold=256)
    outs = engine.generate(prompts, params)
    stats = engine.stats()
    assert stats.num_preemptions > 0
    assert stats.num_free_blocks == stats.num_blocks == 48
    assert stats.num_running == stats.num_waiting == 0

    alone = stories_engine(num_kv_blocks=64, enable_prefix_caching=False)
    for prompt, p, out in zip(prompts, params, outs, strict=True):
        expected = alone.generate([prompt], p)[0]
        assert out.token_ids == expected.token_ids
        assert out.text == expected.text
        assert out.usage.completion_tokens == p.max_tokens


def test_abort_during_prefill_and_during_decode_frees_every_block() -> None:
    engine = stories_engine(long_prefill_threshold=32)
    rng = random.Random(1)
    prefilling = engine.add_request(random_prompt(rng, 300), SamplingParams(max_tokens=50))
    decoding = engine.add_request([1], SamplingParams(max_tokens=100, **GREEDY))
    first = engine.step()
    assert [d.req_id for d in first] == [decoding]  # the 300-token prompt is mid-prefill
    assert engine.stats().num_free_blocks < engine.stats().num_blocks
    engine.abort(prefilling)
    engine.abort("no-such-request")  # harmless
    deltas = engine.step()
    assert [(d.req_id, d.finish_reason) for d in deltas if d.finished] == [(prefilling, "abort")]
    for _ in range(3):
        engine.step()
    engine.abort(decoding)
    final = [d for d in engine.step() if d.finished]
    assert [(d.req_id, d.finish_reason, d.usage.completion_tokens) for d in final] == [
        (decoding, "abort", 5)
    ]
    assert not engine.has_unfinished() or engine.step() == []
    stats = engine.stats()
    assert (stats.num_free_blocks, stats.num_running, stats.num_waiting) == (stats.num_blocks, 0, 0)
    assert not engine.has_unfinished()


def test_seeded_sampling_and_logprobs_do_not_depend_on_the_batch() -> None:
    rng = random.Random(2)
    prompts = [random_prompt(rng, rng.randint(2, 60)) for _ in range(6)]
    params = SamplingParams(
        max_tokens=12, temperature=0.9, top_p=0.95, seed=1234, logprobs=True, top_logprobs=3
    )
    engine = stories_engine()
    together = engine.generate(prompts, params)
    alone = [engine.generate([p], params)[0] for p in prompts[:2]]
    for a, t in zip(alone, together, strict=False):
        assert a.token_ids == t.token_ids
        assert a.logprobs == pytest.approx(t.logprobs, abs=1e-4)
    for out in together:
        assert len(out.logprobs) == len(out.top_logprobs) == len(out.token_ids)
        assert all(len(top) == 3 for top in out.top_logprobs)
        assert all(lp <= 0 for lp in out.logprobs)
    plain = engine.generate(prompts[:1], SamplingParams(max_tokens=4))[0]
    assert plain.logprobs == [] and plain.top_logprobs == [] and plain.prompt_logprobs is None


def test_requests_preempted_for_share_equal_their_runs_alone() -> None:
    # alpha holds both seats; beta arrives and takes one, then alpha's victim resumes by
    # recompute. Seeded sampling draws from (seed, position), so its tokens must not change.
    rng = random.Random(3)
    params = SamplingParams(max_tokens=24, temperature=0.9, seed=77, ignore_eos=True)
    engine = stories_engine(max_num_seqs=2, queue_policy="fair", preemption_quantum=4)
    alpha = [random_prompt(rng, rng.randint(5, 40)) for _ in range(3)]
    ids = [engine.add_request(p, params, tenant="alpha") for p in alpha]
    tokens: dict[str, list[int]] = {}
    for _ in range(6):
        for delta in engine.step():
            tokens.setdefault(delta.req_id, []).extend(delta.token_ids)
    ids.append(engine.add_request(random_prompt(rng, 9), params, tenant="beta"))
    while engine.has_unfinished():
        for delta in engine.step():
            tokens.setdefault(delta.req_id, []).extend(delta.token_ids)
    stats = engine.stats()
    assert stats.tenants["alpha"].preemptions == {"share": 1}
    assert stats.num_free_blocks == stats.num_blocks
    for req_id, prompt in zip(ids, [*alpha, None], strict=True):
        if prompt is not None:
            assert tokens[req_id] == engine.generate([prompt], params)[0].token_ids
