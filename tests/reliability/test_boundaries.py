"""Requests at the limits: a prompt filling the model length but for the one token to
generate, max_tokens at the limit, a KV cache that holds one such request only. Each runs to
the same tokens as a clean run; one token more is refused before any work."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from client import Client
from contract.sampling import SamplingParams
from loompb import serving_pb2
from scheduler import Engine
from tests.reliability.conftest import PROMPTS, assert_idle, clean_tokens, config_of, greedy
from tests.server.conftest import make_engine

MAX_MODEL_LEN = 512  # stories260K's
PROMPT_IDS = [1] + [(7 * i) % 500 + 3 for i in range(MAX_MODEL_LEN - 2)]  # 511 tokens


def clean_ids(prompt: list[int], max_tokens: int) -> list[int]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    [output] = make_engine(device="cpu").generate(prompt, params)
    return list(output.token_ids)


def test_a_prompt_at_exactly_the_model_length(start_server) -> None:
    server = start_server(make_engine(device="cpu"))
    with Client(server.target) as client:
        reply = client.generate(PROMPT_IDS, max_tokens=1, temperature=0, ignore_eos=True)
        assert list(reply.token_ids) == clean_ids(PROMPT_IDS, 1)
        assert reply.usage.prompt_tokens + reply.usage.completion_tokens == MAX_MODEL_LEN
        for prompt, max_tokens in ((PROMPT_IDS, 2), (PROMPT_IDS + [5], 1)):
            with pytest.raises(grpc.RpcError) as refused:
                client.generate(prompt, max_tokens=max_tokens)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "maximum model length (512)" in refused.value.details()
    assert_idle(server)


def test_max_tokens_at_the_limit(start_server) -> None:
    server = start_server(make_engine(device="cpu"))
    with Client(server.target) as client:
        stream = client.generate_stream([1], max_tokens=511, temperature=0, ignore_eos=True)
        deltas = list(stream)
        assert [t for d in deltas for t in d.token_ids] == clean_ids([1], 511)
        assert deltas[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
        with pytest.raises(grpc.RpcError) as refused:
            client.generate([1], max_tokens=512)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_idle(server)


def test_a_kv_cache_that_fits_one_request_only(start_server) -> None:
    # 5 prompt tokens + 400 generated need ceil(404 / 16) = 26 blocks: the whole cache.
    engine = Engine.from_config(config_of(num_kv_blocks=26))
    server = start_server(engine)
    with Client(server.target) as client:
        with ThreadPoolExecutor(3) as pool:  # three at once: they take turns
            runs = list(pool.map(lambda p: greedy(client, p, 400), PROMPTS[:3]))
        with pytest.raises(grpc.RpcError) as refused:
            client.generate(PROMPTS[0], max_tokens=417)  # 421 tokens: 27 blocks
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "need 27 KV blocks, the cache has 26" in refused.value.details()
    for tokens, prompt in zip(runs, PROMPTS[:3], strict=True):
        assert tokens == clean_tokens(prompt, 400)
    assert_idle(server)
