"""The gRPC API's sampling fields beyond the basics: n, penalties and logit_bias, validated
before queueing with the field and its limit named."""

from __future__ import annotations

import grpc
import pytest

from client import Client
from loompb import serving_pb2
from tests.server.conftest import engine_is_idle, wait_until

PROMPT = "Once upon a time"
SAMPLED = {"temperature": 1.5, "max_tokens": 10, "ignore_eos": True, "seed": 5}


def test_generate_with_n_returns_every_sequence(server) -> None:
    with Client(server.target, timeout=30) as client:
        assert client.model_info().max_n == 16
        reply = client.generate(PROMPT, n=3, logprobs=True, **SAMPLED)
        assert [s.index for s in reply.sequences] == [0, 1, 2]
        assert len({tuple(s.token_ids) for s in reply.sequences}) == 3
        first = reply.sequences[0]
        assert (reply.text, list(reply.token_ids)) == (first.text, list(first.token_ids))
        assert all(len(s.logprobs) == 10 for s in reply.sequences)
        assert reply.usage.completion_tokens == 30 and reply.usage.prompt_tokens == 5
        single = client.generate(PROMPT, **SAMPLED)
        assert list(single.token_ids) == list(first.token_ids) and not single.sequences
        # The stream carries the same sequences, each message naming its own.
        texts = {0: "", 1: "", 2: ""}
        messages = list(client.generate_stream(PROMPT, n=3, **SAMPLED))
        for message in messages:
            texts[message.index] += message.text
        assert texts == {s.index: s.text for s in reply.sequences}
        ends = [m.index for m in messages if m.finish_reason]
        assert sorted(ends) == [0, 1, 2] and messages[-1].usage.completion_tokens == 30
    wait_until(lambda: engine_is_idle(server.engine), 5, "every block free")


def test_penalties_and_logit_bias_reach_the_sampler(server) -> None:
    with Client(server.target, timeout=30) as client:
        greedy = {"temperature": 0, "max_tokens": 40, "ignore_eos": True, "logprobs": True}
        plain = client.generate(PROMPT, **greedy)
        banned = plain.token_ids[0]
        biased = client.generate(PROMPT, logit_bias={banned: -100.0}, **greedy)
        assert banned not in biased.token_ids
        repeated = client.generate(PROMPT, frequency_penalty=2.0, presence_penalty=1.0, **greedy)
        assert len(set(repeated.token_ids)) > len(set(plain.token_ids))
        # No token generated yet, nothing to penalise: the first token and its (raw) logprob
        # are the plain run's.
        assert repeated.token_ids[0] == plain.token_ids[0]
        assert repeated.logprobs[0] == plain.logprobs[0]


def test_min_p_1_is_greedy_and_min_p_0_is_off(server) -> None:
    with Client(server.target, timeout=30) as client:
        greedy = client.generate(PROMPT, temperature=0, max_tokens=40, ignore_eos=True)
        only_best = client.generate(PROMPT, min_p=1.0, **{**SAMPLED, "max_tokens": 40})
        assert list(only_best.token_ids) == list(greedy.token_ids)
        sampled = client.generate(PROMPT, **SAMPLED)
        assert list(sampled.token_ids) != list(greedy.token_ids[:10])  # a draw, not greedy
        off = client.generate(PROMPT, min_p=0.0, **SAMPLED)
        assert list(off.token_ids) == list(sampled.token_ids)


@pytest.mark.parametrize(
    ("sampling", "message"),
    [
        ({"min_p": 1.5}, "min_p must be in [0, 1], got 1.5"),
        ({"min_p": -0.25}, "min_p must be in [0, 1], got -0.25"),
        ({"n": 17}, "n must be in [1, 16], got 17"),
        ({"n": 0}, "n must be >= 1, got 0"),
        ({"presence_penalty": 2.5}, "presence_penalty must be in [-2, 2], got 2.5"),
        ({"frequency_penalty": -2.5}, "frequency_penalty must be in [-2, 2], got -2.5"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
        ({"logit_bias": {3: 150.0}}, "logit_bias must be in [-100, 100], got 150.0"),
        ({"logit_bias": {9999: 1.0}}, "logit_bias keys must be in [0, 512), got 9999"),
        ({"logit_bias": {i: 1.0 for i in range(301)}}, "at most 300 entries, got 301"),
    ],
)
def test_bad_sampling_fields_are_refused_naming_the_limit(server, sampling, message) -> None:
    with Client(server.target, timeout=30) as client, pytest.raises(grpc.RpcError) as caught:
        client.generate(PROMPT, **sampling)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in caught.value.details()
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "the engine idle")


def test_the_stub_mirrors_the_new_fields() -> None:
    fields = serving_pb2.SamplingParams.DESCRIPTOR.fields_by_name
    assert fields["n"].has_presence and fields["repetition_penalty"].has_presence
    assert fields["min_p"].has_presence
    assert fields["logit_bias"].message_type.GetOptions().map_entry
