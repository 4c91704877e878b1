"""Speculative decoding end to end on stories260K: greedy output token for token as without
it, batched with requests that do not speculate, across preemption and chunked prefill; no
leaked blocks; the prefix cache never serves a rejected token's K/V; seeded draws reproduce."""

from __future__ import annotations

import pytest

from contract.sampling import SamplingParams
from scheduler.engine import Engine
from tests.scheduler.stories import (
    RecordingWorker,
    assert_nothing_held,
    repeating_prompts,
    stories_engine,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREEDY = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
SPECULATIVE = {"speculative": "ngram", "num_speculative_tokens": 4, "speculative_max_batch": 64}


def _recorded_engine(num_kv_blocks: int, **config: object) -> tuple[Engine, RecordingWorker]:
    engine = stories_engine(num_kv_blocks, **config)
    recorder = RecordingWorker(engine.worker)
    engine.worker = recorder
    return engine, recorder


def test_greedy_equals_without_speculation_batched_with_requests_that_do_not_speculate() -> None:
    prompts = repeating_prompts(0)
    params = [GREEDY] * len(prompts)
    params[1] = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True,
                               repetition_penalty=1.3)  # fmt: skip  # never speculates
    expected = stories_engine(128).generate(prompts, params)
    engine, recorder = _recorded_engine(128, **SPECULATIVE)
    got = engine.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    speculator = engine.scheduler.speculator
    assert speculator is not None and speculator.num_accepted > 0
    assert speculator.num_accepted < speculator.num_proposed  # rejections were exercised
    # Speculating and plain decodes shared steps; the penalised request never speculated.
    mixed = [
        s for s in recorder.steps
        if s.spec_token_ids and len(s.num_scheduled_tokens) > len(s.spec_token_ids)
    ]  # fmt: skip
    assert mixed
    assert not any(got[1].req_id in s.spec_token_ids for s in recorder.steps)
    assert_nothing_held(engine)


def test_greedy_equals_without_speculation_across_preemption_and_chunked_prefill() -> None:
    prompts = repeating_prompts(1, num=8)
    expected = stories_engine(128).generate(prompts, GREEDY)
    # 12 blocks of 16 cannot hold 8 requests of ~90 tokens: requests are preempted and
    # recomputed; prompts arrive in chunks of 8 tokens beside the others' decodes.
    engine, recorder = _recorded_engine(
        12, long_prefill_threshold=8, max_num_batched_tokens=24, max_num_seqs=8, **SPECULATIVE
    )
    got = engine.generate(prompts, GREEDY)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.scheduler.num_preemptions > 0
    assert any(
        s.spec_token_ids and any(n > 1 for r, n in s.num_scheduled_tokens.items()
                                 if r not in s.spec_token_ids)
        for s in recorder.steps
    )  # fmt: skip  # a prefill chunk beside a speculating decode
    assert engine.scheduler.speculator.num_accepted > 0
    assert_nothing_held(engine)


def test_the_prefix_cache_never_serves_a_rejected_tokens_kv() -> None:
    prompts = repeating_prompts(2)
    engine = stories_engine(96, **SPECULATIVE)
    first = engine.generate(prompts, GREEDY)
    speculator = engine.scheduler.speculator
    assert speculator.num_accepted < speculator.num_proposed
    pool = engine.scheduler.kv.pool
    sequences = [o.prompt_token_ids + o.token_ids for o in first]
    # Every cached block holds tokens of a finished sequence, at their place in it.
    bs = engine.scheduler.block_size
    blocks = {tuple(seq[i : i + bs]) for seq in sequences for i in range(0, len(seq) - bs + 1, bs)}
    cached = [pool._token_ids[b] for b in pool._cached.values()]
    assert cached and all(tokens in blocks for tokens in cached)
    # And their K/V are right: continuing each whole sequence from the cache gives what an
    # engine without a prefix cache computes from scratch.
    follow = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    again = engine.generate(sequences, follow)
    assert all(o.usage.cached_prompt_tokens > 0 for o in again)
    uncached = stories_engine(97, enable_prefix_caching=False).generate(sequences, follow)
    assert [o.token_ids for o in again] == [o.token_ids for o in uncached]


def test_seeded_sampling_reproduces_and_equals_the_draws_without_speculation() -> None:
    prompts = repeating_prompts(3)
    seeded = [
        SamplingParams(max_tokens=50, temperature=0.7, seed=100 + i, logprobs=True)
        for i in range(len(prompts))
    ]
    engine = stories_engine(128, **SPECULATIVE)
    batched = engine.generate(prompts, seeded)
    alone = engine.generate(prompts[:1], seeded[:1])[0]
    assert alone.token_ids == batched[0].token_ids
    assert engine.scheduler.speculator.num_accepted > 0
    # The same (seed, position) numbers drive each position, so the tokens are those of
    # the engine without speculation; logprobs are the model's, equal within float32 error.
    plain = stories_engine(128).generate(prompts, seeded)
    assert [o.token_ids for o in batched] == [o.token_ids for o in plain]
    for got, want in zip(batched, plain, strict=True):
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)


def test_proposed_and_accepted_tokens_are_counted_per_request_and_overall() -> None:
    from frontend.metrics import ServingMetrics

    prompts = repeating_prompts(4)
    engine = stories_engine(128, **SPECULATIVE)
    outputs = engine.generate(prompts, GREEDY)
    speculator = engine.scheduler.speculator
    assert all(o.usage.spec_accepted_tokens <= o.usage.spec_proposed_tokens for o in outputs)
    assert sum(o.usage.spec_proposed_tokens for o in outputs) == speculator.num_proposed
    assert sum(o.usage.spec_accepted_tokens for o in outputs) == speculator.num_accepted
    assert outputs[0].usage.spec_accepted_tokens > 0
    stats = engine.stats()
    assert (stats.spec_proposed_tokens, stats.spec_accepted_tokens) == (
        speculator.num_proposed,
        speculator.num_accepted,
    )
    assert stats.spec_acceptance_rate == speculator.num_accepted / speculator.num_proposed

    metrics = ServingMetrics("stories260K")
    metrics.update_engine_stats(stats)
    metrics.update_engine_stats(stats)  # counters add only the increase
    read = metrics.registry.get_sample_value
    labels = {"model": "stories260K"}
    assert read("loom:spec_decode_num_draft_tokens_total", labels) == stats.spec_proposed_tokens
    assert read("loom:spec_decode_num_accepted_tokens_total", labels) == stats.spec_accepted_tokens


def test_stops_end_a_request_where_they_would_without_speculation() -> None:
    """A stop string, stop id or EOS inside the accepted tokens keeps nothing after it: the
    same tokens, logprobs, text and usage as plain decoding."""
    prompts = repeating_prompts(5)
    plain = stories_engine(128)
    free = plain.generate(prompts, SamplingParams(max_tokens=60, temperature=0.0))
    params = []
    for i, out in enumerate(free):
        middle = len(out.text) // 2
        stop = {"stop": [out.text[middle : middle + 3]]} if i % 2 == 0 else {}
        stop_ids = [out.token_ids[30]]
        params.append(SamplingParams(max_tokens=60, temperature=0.0, logprobs=True,
                                     top_logprobs=2, stop_token_ids=stop_ids, **stop))  # fmt: skip
    expected = plain.generate(prompts, params)
    engine = stories_engine(128, **SPECULATIVE)
    got = engine.generate(prompts, params)
    assert engine.scheduler.speculator.num_accepted > 0
    for a, b in zip(got, expected, strict=True):
        assert (a.token_ids, a.text, a.finish_reason) == (b.token_ids, b.text, b.finish_reason)
        assert a.usage.completion_tokens == b.usage.completion_tokens == len(a.logprobs)
        # The model's logprobs, equal within float32 error (a verification step sums the
        # same products in another order than a one-token decode).
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-4)
        assert [[t for t, _ in top] for top in a.top_logprobs] == [
            [t for t, _ in top] for top in b.top_logprobs
        ]
    assert any(o.finish_reason == "stop" for o in got)
    assert_nothing_held(engine)


def test_a_constrained_request_never_speculates_and_holds_its_constraint() -> None:
    # Its mask is for the next position only, so it decodes plainly beside speculating ones,
    # even where its forced text repeats its prompt (what prompt lookup would propose).
    from contract.structured import StructuredOutput

    repeated = "Tim was happy. Lily was sad."
    engine, recorder = _recorded_engine(128, **SPECULATIVE)
    prompt = engine.tokenizer.encode(f"{repeated} {repeated} {repeated}")
    forced = StructuredOutput("regex", r" (Tim was happy\. Lily was sad\. ){3}")
    prompts = [prompt, *repeating_prompts(3)]
    params = [SamplingParams(max_tokens=60, temperature=0.0, structured=forced)]
    params += [GREEDY] * (len(prompts) - 1)
    expected = stories_engine(128).generate(prompts, params)
    got = engine.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.tokenizer.decode(got[0].token_ids).startswith(f"{repeated} {repeated}")
    assert any(s.spec_token_ids for s in recorder.steps)  # the others did speculate
    assert not any(got[0].req_id in s.spec_token_ids for s in recorder.steps)
    assert_nothing_held(engine)
