"""Streaming text with byte-level BPE: characters split over several byte tokens (emoji, CJK)
are never emitted broken, the deltas concatenate to the full decode, and stop strings made of
such characters are found across tokens."""

from __future__ import annotations

import random

import pytest

from contract.sampling import SamplingParams
from modelfiles.tokenizer_hf import HFTokenizer
from scheduler.detokenizer import IncrementalDetokenizer
from scheduler.output_processor import RequestOutputState
from scheduler.request import Request
from tests.scheduler.bpe_files import train_byte_level_bpe, write_hf_dir

TEXT = "你好，世界！ 日本語のテキスト 😀🎉👍🏽 café ❤️ done"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> HFTokenizer:
    return HFTokenizer.from_dir(write_hf_dir(train_byte_level_bpe(), tmp_path_factory.mktemp("t")))


def stream(tokenizer, ids, context=None, chunk=1) -> list[str]:
    detok = IncrementalDetokenizer(tokenizer, context)
    deltas = [detok.add(ids[i : i + chunk]) for i in range(0, len(ids), chunk)]
    return [*deltas, detok.add([], final=True)]


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_emoji_and_cjk_stream_to_the_full_decode(tokenizer, chunk) -> None:
    ids = tokenizer.encode(TEXT, add_bos=False)
    broken = [i for i in ids if "\ufffd" in tokenizer.decode([i])]
    assert len(broken) > 5  # many tokens hold part of a character only
    deltas = stream(tokenizer, ids, chunk=chunk)
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT
    assert not any("\ufffd" in d for d in deltas)
    if chunk == 1:
        assert any("😀" in d for d in deltas) and deltas[:2] == ["你", "好"]


def test_a_continuation_after_a_prompt_keeps_its_text(tokenizer) -> None:
    prompt = tokenizer.encode("<|im_start|>user\n你好<|im_end|>\n", add_bos=False)
    ids = tokenizer.encode(" 世界 😀 ok", add_bos=False)
    assert "".join(stream(tokenizer, ids, prompt)) == " 世界 😀 ok"


@pytest.mark.parametrize("chunk", [1, 3])
def test_random_ids_concatenate_to_the_full_decode(tokenizer, chunk) -> None:
    rng = random.Random(chunk)
    vocab = tokenizer.vocab_size
    contexts = [None, tokenizer.encode("Once upon", add_bos=False), [1]]
    for _ in range(200):
        ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 20))]
        context = rng.choice(contexts)
        full = tokenizer.decode((context or []) + ids)
        context_text = tokenizer.decode(context or [])
        assert "".join(stream(tokenizer, ids, context, chunk)) == full[len(context_text) :]


def run_output_state(tokenizer, ids, stop) -> tuple[str, list[str], int]:
    """Feed the ids one by one as the scheduler does; (text, deltas, tokens until stop)."""
    req = Request("r", [1], SamplingParams(max_tokens=len(ids), stop=stop), eos_ids=(2,))
    state = RequestOutputState(req, tokenizer)
    deltas = []
    for n, token_id in enumerate(ids, start=1):
        req.output_token_ids.append(token_id)
        if state.scan(final=False):
            return state.text, deltas, n
        deltas.append(state.next_delta().text)
    return state.text, deltas, len(ids)


@pytest.mark.parametrize("stop", ["世界", "😀", "🎉👍"])
def test_stop_strings_of_multibyte_characters_are_found_across_tokens(tokenizer, stop) -> None:
    ids = tokenizer.encode(TEXT, add_bos=False)
    text, deltas, num_tokens = run_output_state(tokenizer, ids, [stop])
    assert text == TEXT[: TEXT.index(stop)]
    assert num_tokens < len(ids)  # stopped at the token that completed the stop string
    assert stop not in tokenizer.decode(ids[: num_tokens - 1])
    streamed = "".join(deltas)
    assert text.startswith(streamed) and "\ufffd" not in streamed
