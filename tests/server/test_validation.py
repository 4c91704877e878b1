"""Every bad input gets its status code and a message naming the field; nothing is queued."""

from __future__ import annotations

import grpc
import pytest

from client import Client
from frontend.embedded import ServerHandle, serve_in_thread
from loompb import serving_pb2, serving_pb2_grpc
from tests.server.conftest import engine_is_idle, make_engine, wait_until

INVALID = grpc.StatusCode.INVALID_ARGUMENT

# (case, prompt, sampling kwargs, status, words the message must hold)
ROWS = [
    ("empty prompt", "", {}, INVALID, ["prompt"]),
    ("token id over vocab", [1, 512], {}, INVALID, ["prompt token ids", "512"]),
    ("negative token id", [1, -3], {}, INVALID, ["prompt token ids", "-3"]),
    ("over model length", [1] * 500, {"max_tokens": 13}, INVALID, ["max_tokens", "512"]),
    ("negative temperature", "Hi", {"temperature": -0.5}, INVALID, ["temperature", ">= 0"]),
    ("top_p zero", "Hi", {"top_p": 0.0}, INVALID, ["top_p", "(0, 1]"]),
    ("top_p over one", "Hi", {"top_p": 1.5}, INVALID, ["top_p", "(0, 1]"]),
    ("negative top_k", "Hi", {"top_k": -1}, INVALID, ["top_k", ">= 0"]),
    ("zero max_tokens", "Hi", {"max_tokens": 0}, INVALID, ["max_tokens", ">= 1"]),
    ("empty stop string", "Hi", {"stop": ["ok", ""]}, INVALID, ["stop", "non-empty"]),
    ("too many stops", "Hi", {"stop": [f"s{i}" for i in range(17)]}, INVALID, ["stop", "16"]),
    ("long stop string", "Hi", {"stop": ["x" * 257]}, INVALID, ["stop", "256"]),
    ("top_logprobs over 20", "Hi", {"top_logprobs": 21}, INVALID, ["top_logprobs", "20"]),
    ("min over max", "Hi", {"max_tokens": 4, "min_tokens": 5}, INVALID, ["min_tokens"]),
    ("stop id over vocab", "Hi", {"stop_token_ids": [600]}, INVALID, ["stop_token_ids", "512"]),
    ("long request id", "Hi", {"request_id": "r" * 129}, INVALID, ["request_id", "128"]),
]


@pytest.fixture(scope="module")
def module_server():
    with serve_in_thread(make_engine(), max_request_bytes=64 * 1024) as handle:
        yield handle


@pytest.mark.parametrize(
    ("case", "prompt", "kwargs", "code", "words"), ROWS, ids=[r[0] for r in ROWS]
)
def test_bad_request_is_refused(module_server: ServerHandle, case, prompt, kwargs, code, words):
    with Client(module_server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate(prompt, **kwargs)
        assert err.value.code() == code, err.value.details()
        for word in words:
            assert word in err.value.details()
        # Same refusal on the streaming call.
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate_stream(prompt, **kwargs))
        assert err.value.code() == code
        # Nothing was queued, and the server goes on serving.
        wait_until(lambda: engine_is_idle(module_server.engine), 5.0, "the engine idle")
        assert client.generate("Hi", max_tokens=2).usage.completion_tokens >= 1


def test_prompt_and_token_ids_together(module_server: ServerHandle) -> None:
    request = serving_pb2.GenerateRequest(prompt="Hi", prompt_token_ids=[1, 2])
    with grpc.insecure_channel(module_server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(request)
    assert err.value.code() == INVALID
    assert "prompt_token_ids" in err.value.details()


def test_oversized_message_costs_nothing(module_server: ServerHandle) -> None:
    with Client(module_server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate("word " * 20_000)  # 100 KB > the 64 KiB limit of this server
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        wait_until(lambda: engine_is_idle(module_server.engine), 5.0, "the engine idle")
        assert client.generate("Hi", max_tokens=2).usage.completion_tokens >= 1


def test_live_request_id_is_refused_but_not_across_tenants(module_server: ServerHandle) -> None:
    with Client(module_server.target) as alice, Client(module_server.target, tenant="bob") as bob:
        stream = alice.generate_stream("Hi", max_tokens=300, ignore_eos=True, request_id="r1")
        next(stream)  # r1 is live now
        with pytest.raises(grpc.RpcError) as err:
            alice.generate("Hi", max_tokens=2, request_id="r1")
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # Another tenant's id space is its own.
        assert bob.generate("Hi", max_tokens=2, request_id="r1").request_id == "r1"
        stream.close()


def test_bad_tenant_header_and_detokenize_range(module_server: ServerHandle) -> None:
    with Client(module_server.target, tenant="no spaces allowed") as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi")
        assert err.value.code() == INVALID
        assert "x-loom-tenant" in err.value.details()
    with Client(module_server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.detokenize([1, 9999])
        assert err.value.code() == INVALID
        assert "token_ids" in err.value.details()
