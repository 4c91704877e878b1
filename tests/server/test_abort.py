"""The Abort call: by request id, within the caller's tenant only."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from client import Client
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from tests.server.conftest import engine_is_idle, wait_until


def test_abort_ends_the_stream_with_finish_reason_abort_and_frees_blocks(server) -> None:
    with Client(server.target, tenant="alice") as alice:
        stream = alice.generate_stream(
            "Once upon a time", max_tokens=400, ignore_eos=True, request_id="story"
        )
        first = next(stream)
        assert first.request_id == "story"
        assert alice.abort(["story", "story", "never-sent"]) == ["story"]
        rest = list(stream)
    assert rest[-1].finish_reason == serving_pb2.FINISH_REASON_ABORT
    assert sum(len(m.token_ids) for m in [first, *rest]) < 400
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
    with Client(server.target, tenant="alice") as alice:
        assert alice.abort("story") == []  # finished: nothing left to abort


def test_a_unary_call_aborted_returns_what_it_had(server) -> None:
    with Client(server.target, tenant="alice") as alice, ThreadPoolExecutor(1) as pool:
        future = pool.submit(
            alice.generate, "Once upon a time", max_tokens=400, ignore_eos=True, request_id="long"
        )
        wait_until(lambda: "alice/long" in server.engine.scheduler.requests, 5.0, "running")
        assert alice.abort("long") == ["long"]
        reply = future.result(timeout=10)
    assert reply.finish_reason == serving_pb2.FINISH_REASON_ABORT
    assert reply.usage.completion_tokens == len(reply.token_ids) < 400


def cross_tenant_abort_aborts_nothing(server: ServerHandle, owner: Client, other: Client):
    stream = owner.generate_stream(
        "Once upon a time", max_tokens=60, ignore_eos=True, request_id="mine"
    )
    next(stream)
    assert other.abort(["mine"]) == []
    messages = list(stream)
    assert messages[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
    assert messages[-1].usage.completion_tokens == 60


def test_another_tenants_id_is_not_found_and_not_aborted(server) -> None:
    with (
        Client(server.target, tenant="alice") as alice,
        Client(server.target, tenant="mallory") as mallory,
    ):
        cross_tenant_abort_aborts_nothing(server, alice, mallory)


def test_with_keys_another_tenants_id_is_not_found_either(start_server, tmp_path) -> None:
    from serving.auth import load_api_keys

    keys = tmp_path / "keys"
    keys.write_text("key-a alice\nkey-m mallory\n")
    server = start_server(api_keys=load_api_keys(keys))
    with (
        Client(server.target, api_key="key-a") as alice,
        Client(server.target, api_key="key-m") as mallory,
    ):
        cross_tenant_abort_aborts_nothing(server, alice, mallory)
        with Client(server.target, api_key="nope") as stranger, pytest.raises(grpc.RpcError) as e:
            stranger.abort(["mine"])
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_an_id_too_long_or_empty_is_invalid(server) -> None:
    with Client(server.target) as client:
        for ids in (["x" * 129], [""]):
            with pytest.raises(grpc.RpcError) as err:
                client.abort(ids)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
