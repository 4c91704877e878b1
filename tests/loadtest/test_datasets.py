"""Workload generators and file loaders, on small fixture files and the real tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from loadtest.dataset_files import load_jsonl, load_sharegpt
from loadtest.datasets import (
    SampleRequest,
    Vocabulary,
    check_fits,
    length_range,
    random_requests,
    shared_prefix_requests,
)

FIXTURES = Path(__file__).parent / "fixtures"
VOCAB = Vocabulary(vocab_size=512, special_token_ids=frozenset({1, 2}))


@pytest.fixture(scope="module")
def tokenize(stories_dir: Path):
    sp = spm.SentencePieceProcessor(model_file=str(stories_dir / "tokenizer.model"))
    return lambda text: sp.encode(text)


def test_random_prompts_have_exact_lengths_and_ordinary_token_ids() -> None:
    reqs = random_requests(50, 32, 7, 0.0, VOCAB, np.random.default_rng(0))
    assert len(reqs) == 50
    for r in reqs:
        assert r.prompt_len == len(r.prompt_token_ids) == 32
        assert r.max_tokens == 7
        assert r.ignore_eos and r.prompt is None
        assert all(0 <= t < 512 and t not in (1, 2) for t in r.prompt_token_ids)
    # Prompts differ from one another: the ids are drawn, not repeated.
    assert len({tuple(r.prompt_token_ids) for r in reqs}) == 50


def test_random_lengths_spread_uniformly_over_the_range() -> None:
    reqs = random_requests(4000, 100, 40, 0.5, VOCAB, np.random.default_rng(1))
    assert length_range(100, 0.5) == (50, 150)
    input_lens = np.array([r.prompt_len for r in reqs])
    output_lens = np.array([r.max_tokens for r in reqs])
    assert input_lens.min() == 50 and input_lens.max() == 150
    assert output_lens.min() == 20 and output_lens.max() == 60
    assert input_lens.mean() == pytest.approx(100, rel=0.02)
    # Uniform over 101 values: each appears about 4000 / 101 ~ 40 times.
    counts = np.bincount(input_lens - 50)
    assert counts.min() > 15 and counts.max() < 70


def test_random_workload_is_fixed_by_its_seed() -> None:
    a = random_requests(5, 10, 5, 0.3, VOCAB, np.random.default_rng(4))
    b = random_requests(5, 10, 5, 0.3, VOCAB, np.random.default_rng(4))
    c = random_requests(5, 10, 5, 0.3, VOCAB, np.random.default_rng(5))
    assert a == b
    assert a != c


def test_shared_prefix_requests_share_exactly_their_prefix() -> None:
    reqs = shared_prefix_requests(9, 24, 3, 8, 4, 0.0, VOCAB, np.random.default_rng(2))
    prefixes = [tuple(r.prompt_token_ids[:24]) for r in reqs]
    assert len(set(prefixes)) == 3
    for i, r in enumerate(reqs):
        assert r.prompt_len == len(r.prompt_token_ids) == 32
        assert prefixes[i] == prefixes[i % 3]
    assert len({tuple(r.prompt_token_ids[24:]) for r in reqs}) == 9


def test_check_fits_refuses_requests_longer_than_the_model() -> None:
    check_fits([SampleRequest(prompt_len=500, max_tokens=12)], max_model_len=512)
    with pytest.raises(ValueError, match="exceeds the model's maximum length 512"):
        check_fits([SampleRequest(prompt_len=500, max_tokens=13)], max_model_len=512)


def test_sharegpt_takes_first_turns_and_drops_short_conversations(tokenize) -> None:
    reqs = load_sharegpt(
        FIXTURES / "sharegpt_small.json", 2, tokenize, 512, np.random.default_rng(0)
    )
    # Of five conversations: "b" has a 1-token prompt, "c" one turn, "d" a 1-token reply.
    usable = {
        "Once upon a time there was a little girl named Lily.": "She liked to play in the "
        "park with her big red ball every day.",
        "One day a cat found a big box in the garden near the house.": "The cat jumped into "
        "the box and had a nap in the sun.",
    }
    assert {r.prompt for r in reqs} == set(usable)
    for r in reqs:
        assert r.prompt_len == len(tokenize(r.prompt)) + 1  # + BOS
        assert r.max_tokens == len(tokenize(usable[r.prompt]))
        assert r.prompt_token_ids is None and not r.ignore_eos


def test_sharegpt_reuses_conversations_and_fixes_output_len(tokenize) -> None:
    reqs = load_sharegpt(
        FIXTURES / "sharegpt_small.json",
        5,
        tokenize,
        512,
        np.random.default_rng(0),
        fixed_output_len=9,
    )
    assert len(reqs) == 5
    # With a fixed output length the reply's length no longer matters, so "d" counts too.
    assert len({r.prompt for r in reqs}) == 3
    assert reqs[3:] == reqs[:2]
    assert [r.max_tokens for r in reqs] == [9] * 5


def test_sharegpt_drops_conversations_too_long_for_the_model(tokenize) -> None:
    with pytest.raises(ValueError, match="no usable conversation"):
        load_sharegpt(FIXTURES / "sharegpt_small.json", 2, tokenize, 10, np.random.default_rng(0))


def test_jsonl_reads_prompt_and_max_tokens_in_order(tokenize) -> None:
    reqs = load_jsonl(FIXTURES / "requests_small.jsonl", 3, tokenize, 512)
    assert [r.prompt for r in reqs] == [
        "Once upon a time there was a boy.",
        "The little bird flew over the river.",
        "Once upon a time there was a boy.",
    ]
    assert [r.max_tokens for r in reqs] == [8, 3, 8]
    assert reqs[1].prompt_len == len(tokenize("The little bird flew over the river.")) + 1


def test_jsonl_names_the_bad_line(tmp_path: Path, tokenize) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine", "max_tokens": 2}\n{"prompt": "no length"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_jsonl(bad, 2, tokenize, 512)
    bad.write_text('{"prompt": "fine", "max_tokens": 0}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'max_tokens' must be an integer >= 1"):
        load_jsonl(bad, 1, tokenize, 512)
