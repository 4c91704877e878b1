"""Generate and GenerateStream give what the offline engine gives."""

from __future__ import annotations

import pytest

from client import Client
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from scheduler import SamplingParams
from tests.conftest import STORIES_DIR
from tests.server.conftest import engine_is_idle, make_engine, wait_until

PROMPTS = ["Once upon a time", "Lily and Ben went to the park", "The cat"]


@pytest.fixture(scope="module")
def offline():
    return make_engine()


def test_generate_and_stream_equal_the_offline_engine(server: ServerHandle, offline) -> None:
    params = SamplingParams(max_tokens=40, temperature=0, logprobs=True, top_logprobs=3)
    expected = offline.generate(PROMPTS, params)
    with Client(server.target) as client:
        for prompt, want in zip(PROMPTS, expected, strict=True):
            got = client.generate(
                prompt, max_tokens=40, temperature=0, logprobs=True, top_logprobs=3
            )
            assert list(got.token_ids) == want.token_ids
            assert got.text == want.text
            assert list(got.logprobs) == pytest.approx(want.logprobs, abs=1e-5)
            assert [list(t.token_ids) for t in got.top_logprobs] == [
                [token_id for token_id, _ in top] for top in want.top_logprobs
            ]
            assert got.finish_reason == serving_pb2.FINISH_REASON_LENGTH
            assert got.usage.prompt_tokens == len(want.prompt_token_ids)
            assert got.usage.completion_tokens == 40

            deltas = list(
                client.generate_stream(prompt, max_tokens=40, temperature=0, logprobs=True)
            )
            # Only the last message finishes, and the messages concatenate to the unary reply.
            assert [d.finish_reason for d in deltas[:-1]] == [0] * (len(deltas) - 1)
            assert deltas[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
            assert deltas[-1].usage.completion_tokens == 40
            assert "".join(d.text for d in deltas) == got.text
            assert [t for d in deltas for t in d.token_ids] == list(got.token_ids)
            assert [lp for d in deltas for lp in d.logprobs] == pytest.approx(
                list(got.logprobs), abs=1e-5
            )
            assert {d.request_id for d in deltas} == {deltas[0].request_id}
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle after the calls")


def test_greedy_from_bos_is_the_published_text(server: ServerHandle) -> None:
    published = (STORIES_DIR / "greedy_from_bos_256.txt").read_text()
    with Client(server.target) as client:
        reply = client.generate([1], max_tokens=256, temperature=0, ignore_eos=True)
    assert len(reply.token_ids) == 256
    assert reply.text.strip() == published.strip()


def test_token_prompt_seed_echo_and_request_id(server: ServerHandle, offline) -> None:
    prompt_ids = offline.tokenizer.encode("Once upon a time", add_bos=True)
    params = SamplingParams(max_tokens=12, temperature=0.8, seed=7, echo=True)
    [want] = offline.generate([prompt_ids], params)
    with Client(server.target) as client:
        got = client.generate(
            prompt_ids, max_tokens=12, temperature=0.8, seed=7, echo=True, request_id="mine-1"
        )
    assert got.request_id == "mine-1"
    assert list(got.token_ids) == want.token_ids
    assert list(got.prompt_token_ids) == prompt_ids
    # One logprob per prompt token after the first.
    assert list(got.prompt_logprobs) == pytest.approx(want.prompt_logprobs[1:], abs=1e-5)


def test_defaults_apply_when_fields_are_unset(server: ServerHandle) -> None:
    with Client(server.target) as client:
        reply = client.generate("Once upon a time", ignore_eos=True)
    assert len(reply.token_ids) == 16  # max_tokens default
    assert list(reply.logprobs) == []  # logprobs default off


def test_model_info_tokenize_detokenize(server: ServerHandle) -> None:
    info = server.engine.info
    with Client(server.target) as client:
        model = client.model_info()
        tokens = client.tokenize("Once upon a time", add_bos=True)
        text = client.detokenize(list(tokens.token_ids))
    assert model.model_name == "stories260K"
    assert (model.vocab_size, model.max_model_len) == (512, 512)
    assert (model.bos_token_id, model.eos_token_id) == (1, 2)
    assert model.kv_cache_capacity_tokens == info.num_kv_blocks * info.block_size
    assert model.max_top_logprobs == 20
    assert tokens.token_ids[0] == 1
    assert tokens.pieces[0] == "<s>"
    assert list(tokens.token_ids) == server.engine.tokenizer.encode("Once upon a time")
    assert text.text == "Once upon a time"
    assert list(text.pieces) == list(tokens.pieces)
