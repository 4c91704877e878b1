"""Speculative decoding with a draft model end to end on stories260K: greedy output token for
token as without it (a disturbed stories260K as the draft: some proposals accepted, some not;
the model as its own draft: all accepted), batched with requests that do not speculate, across
preemption, chunked prefill and prefix-cache hits; no leaked blocks; seeded draws reproduce;
and the setups a draft cannot run in refused at start, with the reason."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch

from contract.sampling import SamplingParams
from contract.step import Worker
from modelfiles.tokenizer import Tokenizer
from scheduler.engine import Engine, EngineConfig
from tests.conftest import REPO_ROOT, STORIES_DIR
from tests.scheduler.stories import (
    RecordingWorker,
    assert_nothing_held,
    random_prompt,
    repeating_prompts,
    stories_engine,
)
from tests.worker.draft_models import SMALL_PARAMS, write_noisy_stories, write_random_draft
from worker import create_worker
from worker.kv_cache import bytes_per_block
from worker.model_args import args_from_meta_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREEDY = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
_workers: dict[tuple[str, int], Worker] = {}


@pytest.fixture(scope="module")
def noisy_draft(tmp_path_factory) -> str:
    """stories260K disturbed by a tenth of each tensor's spread: about 40% accepted."""
    return str(write_noisy_stories(tmp_path_factory.mktemp("noisy") / "draft", noise=0.1))


def _draft_engine(draft: str, num_kv_blocks: int = 128, **config: object) -> Engine:
    key = (draft, num_kv_blocks)
    if key not in _workers:  # loading costs seconds: one worker per draft and cache size
        _workers[key] = create_worker(
            model=str(STORIES_DIR), num_kv_blocks=num_kv_blocks, draft_model=draft
        )
    settings = {"speculative_max_batch": 64, **config}
    engine_config = EngineConfig.from_kwargs(speculative="draft", draft_model=draft, **settings)
    return Engine(RecordingWorker(_workers[key]), Tokenizer.from_model_dir(STORIES_DIR),
                  engine_config)  # fmt: skip


def _prompts(seed: int, num: int = 4) -> list[list[int]]:
    rng = random.Random(seed)
    return [random_prompt(rng, 12 + 5 * i) for i in range(num)]


def test_greedy_equals_without_a_draft_batched_with_requests_that_do_not_speculate(
    noisy_draft,
) -> None:
    prompts = _prompts(0)
    params = [GREEDY] * len(prompts)
    params[1] = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True,
                               repetition_penalty=1.3)  # fmt: skip  # never speculates
    expected = stories_engine(128).generate(prompts, params)
    engine = _draft_engine(noisy_draft)
    got = engine.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    speculator = engine.scheduler.speculator
    assert 0 < speculator.num_accepted < speculator.num_proposed  # rejections exercised
    steps = engine.worker.steps
    assert any(s.num_draft_tokens and len(s.num_scheduled_tokens) > len(s.num_draft_tokens)
               for s in steps)  # fmt: skip  # drafting and plain decodes shared steps
    assert not any(got[1].req_id in s.num_draft_tokens for s in steps)
    assert not any(s.spec_token_ids for s in steps)  # the scheduler proposes nothing itself
    assert_nothing_held(engine)


def test_the_drafts_proposals_are_its_greedy_output_from_the_same_tokens(noisy_draft) -> None:
    """Its cache is right after rejections, preemptions and chunked prefills: each proposal
    run is what the draft model, decoding greedily from scratch, makes of the same tokens."""
    engine = _draft_engine(
        noisy_draft, 12, long_prefill_threshold=8, max_num_batched_tokens=24, max_num_seqs=8
    )
    draft = engine.worker.inner.draft
    runs: list[tuple[list[int], list[int]]] = []

    def recording(requests, num_tokens):
        known = {r: list(requests[r].token_ids) for r in num_tokens}
        proposals = type(draft).propose(draft, requests, num_tokens)
        runs.extend((known[r], proposals[r]) for r in num_tokens)
        return proposals

    draft.propose = recording
    try:
        engine.generate([*_prompts(5, num=6), *repeating_prompts(5, num=2)], GREEDY)
    finally:
        del draft.propose
    assert engine.scheduler.num_preemptions > 0
    assert 0 < engine.scheduler.speculator.num_accepted < engine.scheduler.speculator.num_proposed
    plain = Engine.from_model_dir(noisy_draft, num_kv_blocks=256)
    params = [SamplingParams(max_tokens=len(p), temperature=0.0, ignore_eos=True) for _, p in runs]
    fresh = plain.generate([known for known, _ in runs], params)
    assert [o.token_ids for o in fresh] == [proposals for _, proposals in runs]


def test_the_model_as_its_own_draft_has_every_proposal_accepted() -> None:
    prompts = _prompts(1)
    expected = stories_engine(128).generate(prompts, GREEDY)
    engine = _draft_engine(str(STORIES_DIR))
    got = engine.generate(prompts, GREEDY)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    speculator = engine.scheduler.speculator
    assert speculator.num_proposed > 100 and speculator.num_accepted == speculator.num_proposed
    # Fewer steps than tokens: each verified step added 1 + k tokens per request.
    assert len(engine.worker.steps) < GREEDY.max_tokens
    assert_nothing_held(engine)


def test_greedy_equals_without_a_draft_across_preemption_chunked_prefill_and_cache_hits(
    noisy_draft,
) -> None:
    prompts = [*_prompts(2, num=6), *repeating_prompts(2, num=2)]
    expected = stories_engine(128).generate(prompts, GREEDY)
    # 12 blocks of 16 cannot hold 8 requests of ~90 tokens: requests are preempted and
    # recomputed (their prefixes from the cache, which the draft catches up on); prompts
    # arrive in chunks of 8 tokens beside the others' decodes.
    engine = _draft_engine(
        noisy_draft, 12, long_prefill_threshold=8, max_num_batched_tokens=24, max_num_seqs=8
    )
    got = engine.generate(prompts, GREEDY)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.scheduler.num_preemptions > 0
    assert any(
        s.num_draft_tokens and any(n > 1 for r, n in s.num_scheduled_tokens.items()
                                   if r not in s.num_draft_tokens)
        for s in engine.worker.steps
    )  # fmt: skip  # a prefill chunk beside a drafting decode
    assert any(s.new and any(n.num_computed_tokens for n in s.new) for s in engine.worker.steps)
    assert engine.scheduler.speculator.num_accepted > 0
    assert_nothing_held(engine)
    # Whole sequences again, from the prefix cache: the draft starts from cached blocks.
    sequences = [o.prompt_token_ids + o.token_ids for o in got]
    follow = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    engine = _draft_engine(noisy_draft)
    engine.generate(sequences, follow)
    again = engine.generate(sequences, follow)
    assert all(o.usage.cached_prompt_tokens > 0 for o in again)
    uncached = stories_engine(97, enable_prefix_caching=False).generate(sequences, follow)
    assert [o.token_ids for o in again] == [o.token_ids for o in uncached]


def test_seeded_sampling_reproduces_and_equals_the_draws_without_a_draft(noisy_draft) -> None:
    prompts = _prompts(3)
    seeded = [
        SamplingParams(max_tokens=50, temperature=0.7, seed=100 + i, logprobs=True)
        for i in range(len(prompts))
    ]
    engine = _draft_engine(noisy_draft)
    batched = engine.generate(prompts, seeded)
    alone = engine.generate(prompts[:1], seeded[:1])[0]
    assert alone.token_ids == batched[0].token_ids
    assert engine.scheduler.speculator.num_accepted > 0
    plain = stories_engine(128).generate(prompts, seeded)
    assert [o.token_ids for o in batched] == [o.token_ids for o in plain]
    for got, want in zip(batched, plain, strict=True):
        assert got.logprobs == pytest.approx(want.logprobs, abs=1e-4)
    counted = [(o.usage.spec_proposed_tokens, o.usage.spec_accepted_tokens) for o in batched]
    assert all(0 <= accepted <= proposed for proposed, accepted in counted)
    assert sum(p for p, _ in counted) + alone.usage.spec_proposed_tokens == (
        engine.scheduler.speculator.num_proposed
    )


def test_a_draft_of_another_vocabulary_is_refused_at_start(tmp_path) -> None:
    params = {"dim": 32, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256,
              "multiple_of": 32, "norm_eps": 1e-5, "max_seq_len": 256}  # fmt: skip
    draft = write_random_draft(tmp_path / "draft", params)
    with pytest.raises(ValueError, match=r"vocabulary of 256 tokens .* the model 512"):
        create_worker(model=str(STORIES_DIR), num_kv_blocks=8, draft_model=str(draft))


def test_setups_without_a_draft_model_are_refused_at_start(tmp_path) -> None:
    with pytest.raises(ValueError, match="draft_model is needed with speculative=draft"):
        EngineConfig.from_kwargs(speculative="draft")
    with pytest.raises(ValueError, match="draft_model is needed with speculative=draft"):
        EngineConfig.from_kwargs(speculative="ngram", draft_model=str(STORIES_DIR))
    config = EngineConfig.from_kwargs(
        speculative="draft", draft_model=str(STORIES_DIR), tensor_parallel_size=2
    )
    with pytest.raises(ValueError, match="without tensor parallelism"):
        config.worker  # noqa: B018  # what create_worker is given
    drafting = EngineConfig.from_kwargs(speculative="draft", draft_model=str(STORIES_DIR))
    with pytest.raises(ValueError, match="runs none"):  # a worker loaded without the draft
        Engine(stories_engine(128).worker, Tokenizer.from_model_dir(STORIES_DIR), drafting)


@pytest.mark.parametrize(
    ("flags", "why"),
    [
        (["--worker", "127.0.0.1:9"], "a remote worker (--worker) runs none"),
        (["--tensor-parallel-size", "2"], "needs a worker without tensor parallelism"),
    ],
)
def test_serve_refuses_a_draft_where_it_cannot_run(flags: list[str], why: str) -> None:
    argv = [sys.executable, "-m", "frontend", "serve", "--port", "0", "--speculative", "draft",
            "--draft-model", str(STORIES_DIR), *flags]  # fmt: skip
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert why in result.stderr
    assert "reading the weights" not in result.stderr  # refused before any weight was read


def test_the_kv_cache_budget_holds_the_draft_cache_too(tmp_path) -> None:
    draft = write_random_draft(tmp_path / "draft")
    budget = 1 << 20
    alone = create_worker(model=str(STORIES_DIR), kv_cache_memory=budget).info()
    both = create_worker(model=str(STORIES_DIR), kv_cache_memory=budget, draft_model=str(draft))
    model = args_from_meta_params(json.loads((STORIES_DIR / "params.json").read_text()), 512)
    per_block = bytes_per_block(model, 16, torch.float32)
    per_draft_block = bytes_per_block(args_from_meta_params(SMALL_PARAMS, 512), 16, torch.float32)
    assert alone.num_kv_blocks == budget // per_block
    assert both.info().num_kv_blocks == budget // (per_block + per_draft_block)
    assert both.info().draft_model == "draft"
    assert both.draft.kv_cache.num_blocks == both.info().num_kv_blocks
