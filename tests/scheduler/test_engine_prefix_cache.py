"""Prefix caching end to end on stories260K: hits, eviction, and echo prompt logprobs."""

from __future__ import annotations

import random

import pytest

from contract.sampling import SamplingParams
from tests.scheduler.stories import random_prompt, stories_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def _prompts_with_shared_prefix(seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    prefix = random_prompt(rng, 200)
    return [prefix + [rng.randrange(3, 512) for _ in range(rng.randint(1, 40))] for _ in range(4)]


def test_shared_prefix_is_served_from_the_cache_with_identical_output() -> None:
    prompts = _prompts_with_shared_prefix(0)
    cached = stories_engine()
    first = cached.generate(prompts[:1], GREEDY)[0]
    rest = cached.generate(prompts[1:], GREEDY)
    assert first.usage.cached_prompt_tokens == 0
    assert [o.usage.cached_prompt_tokens for o in rest] == [192, 192, 192]  # 12 full blocks
    stats = cached.stats()
    assert stats.prefix_cache_hits == 3 * 192
    assert stats.prefix_cache_queries == sum(len(p) for p in prompts)

    uncached = stories_engine(enable_prefix_caching=False)
    expected = uncached.generate(prompts, GREEDY)
    assert [o.usage.cached_prompt_tokens for o in expected] == [0, 0, 0, 0]
    assert [o.token_ids for o in [first, *rest]] == [o.token_ids for o in expected]


def test_output_stays_correct_when_the_prefix_is_evicted() -> None:
    prompts = _prompts_with_shared_prefix(1)
    rng = random.Random(9)
    filler = random_prompt(rng, 250)
    # 20 blocks: the filler's 16 blocks must evict most of the cached prefix.
    engine = stories_engine(num_kv_blocks=20)
    first = engine.generate(prompts[:1], GREEDY)[0]
    engine.generate([filler], GREEDY)
    second = engine.generate(prompts[1:2], GREEDY)[0]
    # Of the 13 cached blocks, the filler took 7 never-cached blocks and evicted 10 cached
    # ones, the prefix's tail first: its first 3 blocks are still there.
    assert second.usage.cached_prompt_tokens == 48
    expected = stories_engine(enable_prefix_caching=False).generate(prompts[:2], GREEDY)
    assert [first.token_ids, second.token_ids] == [o.token_ids for o in expected]
    assert engine.stats().num_free_blocks == 20


def test_echo_prompt_logprobs_with_and_without_a_cached_prefix() -> None:
    prompt = _prompts_with_shared_prefix(2)[0]
    echo = SamplingParams(max_tokens=4, temperature=0.0, echo=True, logprobs=True, top_logprobs=2)
    uncached = stories_engine(enable_prefix_caching=False).generate([prompt], echo)[0]

    # The cache holds the prefix, yet echo computes every prompt position, in 64-token chunks.
    engine = stories_engine(long_prefill_threshold=64)
    engine.generate([prompt], GREEDY)
    cached = engine.generate([prompt], echo)[0]
    assert cached.usage.cached_prompt_tokens == 0
    assert cached.prompt_token_ids == prompt
    for out in (uncached, cached):
        assert len(out.prompt_logprobs) == len(prompt)
        assert out.prompt_logprobs[0] is None and out.prompt_top_logprobs[0] is None
        assert all(lp is not None and lp <= 0 for lp in out.prompt_logprobs[1:])
        assert all(len(top) == 2 for top in out.prompt_top_logprobs[1:])
    assert cached.prompt_logprobs[1:] == pytest.approx(uncached.prompt_logprobs[1:], abs=1e-4)
    assert cached.token_ids == uncached.token_ids

    # Cross-check by position: the first generated token, echoed as the last prompt token of
    # a longer prompt, has the logprob the sampler reported for it.
    longer = engine.generate([prompt + cached.token_ids[:1]], echo)[0]
    assert longer.prompt_logprobs[-1] == pytest.approx(cached.logprobs[0], abs=1e-4)
