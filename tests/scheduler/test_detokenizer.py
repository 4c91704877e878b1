"""Incremental detokenization against a full decode, with real SentencePiece models."""

from __future__ import annotations

import random

import pytest

from modelfiles.tokenizer import Tokenizer
from modelfiles.tokenizer_sp import SentencePieceTokenizer
from scheduler.detokenizer import IncrementalDetokenizer
from scheduler.stop import StopStringMatcher

CJK_EMOJI = "你好，世界！ 日本語のテキスト 😀🎉 café  two  spaces\nnew line"


@pytest.fixture(scope="module")
def stories_tokenizer(stories_dir) -> Tokenizer:
    return Tokenizer.from_model_dir(stories_dir)


@pytest.fixture(scope="module")
def llama2_tokenizer(llama2_tokenizer_path) -> Tokenizer:
    return SentencePieceTokenizer(llama2_tokenizer_path)


def _stream(tokenizer: Tokenizer, ids: list[int], context=None, chunk: int = 1) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, context)
    deltas = [detok.add(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    return [*deltas, detok.add([], final=True)]


def _check_deltas(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    deltas = _stream(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids)
    # No delta ends inside a character: the replacement char never shows mid-stream.
    assert not any("\ufffd" in d for d in deltas)
    return deltas


def test_stories_tokenizer_byte_fallback_and_spaces(stories_tokenizer: Tokenizer) -> None:
    ids = stories_tokenizer.encode(CJK_EMOJI, add_bos=False)
    pieces = [stories_tokenizer.id_to_piece(i) for i in ids]
    assert "<0xE4>" in pieces and "<0xF0>" in pieces  # tok512 spells these byte by byte
    deltas = _check_deltas(stories_tokenizer, ids)
    assert "你" in deltas and "😀" in deltas  # emitted whole, once their last byte arrived


def test_llama2_tokenizer_cjk_and_emoji(llama2_tokenizer: Tokenizer) -> None:
    ids = llama2_tokenizer.encode(CJK_EMOJI, add_bos=False)
    assert [1, *llama2_tokenizer.encode("I believe the meaning of life is", add_bos=False)] == [
        1, 306, 4658, 278, 6593, 310, 2834, 338,
    ]  # fmt: skip
    deltas = _check_deltas(llama2_tokenizer, ids)
    assert "😀" in "".join(deltas)


def test_a_continuation_keeps_its_leading_space(stories_tokenizer: Tokenizer) -> None:
    prompt = stories_tokenizer.encode("Once upon a")
    ids = stories_tokenizer.encode(" time there was", add_bos=False)
    assert "".join(_stream(stories_tokenizer, ids, prompt)) == " time there was"
    # After BOS alone there is no text yet, so the first space goes, as a full decode drops it.
    assert "".join(_stream(stories_tokenizer, ids, [1])) == "time there was"


@pytest.mark.parametrize("chunk", [1, 3])
def test_random_ids_concatenate_to_the_full_decode(
    stories_tokenizer: Tokenizer, chunk: int
) -> None:
    rng = random.Random(chunk)
    space = next(i for i in range(512) if stories_tokenizer.id_to_piece(i) == "\u2581")
    for _ in range(300):
        # Random ids, heavy on the awkward ones: spaces, BOS/EOS, unknown, raw bytes.
        ids = [
            rng.choice([space, 0, 1, 2, rng.randrange(3, 259), rng.randrange(512)])
            for _ in range(rng.randint(1, 24))
        ]
        context = rng.choice([None, [1], stories_tokenizer.encode("Hi there")])
        full = stories_tokenizer.decode((context or []) + ids)
        context_text = stories_tokenizer.decode(context or [])
        assert "".join(_stream(stories_tokenizer, ids, context, chunk)) == full[len(context_text) :]


def test_stop_matcher_finds_the_earliest_match_across_the_checked_boundary() -> None:
    matcher = StopStringMatcher(["END", "xyz"])
    assert matcher.holdback == 2
    assert matcher.find("abcxyEN", 5) == -1
    assert matcher.find("abcxyENDxyz", 7) == 5  # "END" began before the checked boundary
    assert matcher.find("xyz and END", 9) == 8  # "xyz" lies before num_checked - 2: not searched
