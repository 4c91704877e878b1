"""Through the router, clients see what one engine would give them: the same greedy output,
the same replies and the same refusals; health and reflection as an engine has them."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client import Client
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from router.server import RouterHandle
from tests.server.conftest import engine_is_idle, wait_until

PROMPTS = ["Once upon a time", "Lily and Ben went to the park", "The cat"]
SAMPLING = {"max_tokens": 40, "temperature": 0, "logprobs": True, "top_logprobs": 3}


def without_id(reply: serving_pb2.GenerateResponse) -> serving_pb2.GenerateResponse:
    copy = serving_pb2.GenerateResponse()
    copy.CopyFrom(reply)
    copy.ClearField("request_id")
    return copy


def test_same_greedy_output_as_one_engine(
    two_engines: tuple[ServerHandle, ServerHandle],
    start_engine: Callable[..., ServerHandle],
    start_router: Callable[..., RouterHandle],
) -> None:
    alone = start_engine()
    router = start_router(*(e.target for e in two_engines))
    with Client(alone.target) as direct, Client(router.target) as routed:
        for prompt in PROMPTS * 2:  # twice: the second time from the prefix cache
            want = direct.generate(prompt, **SAMPLING)
            got = routed.generate(prompt, **SAMPLING)
            assert without_id(got) == without_id(want)
            deltas = list(routed.generate_stream(prompt, **SAMPLING))
            assert [t for d in deltas for t in d.token_ids] == list(want.token_ids)
            assert "".join(d.text for d in deltas) == want.text
            assert deltas[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
            assert deltas[-1].usage.completion_tokens == 40
            assert {d.request_id for d in deltas} == {deltas[0].request_id}
        ids = direct.tokenize("Once upon a time", add_bos=True).token_ids
        echo = {"max_tokens": 12, "temperature": 0.8, "seed": 7, "echo": True}
        want = direct.generate(list(ids), **echo)
        got = routed.generate(list(ids), request_id="mine-1", **echo)
        assert got.request_id == "mine-1"
        assert without_id(got) == without_id(want)
    for engine in two_engines:
        wait_until(lambda e=engine: engine_is_idle(e.engine), 5.0, "engines idle")
    num_requests = sum(
        router.router.metrics.registry.get_sample_value(
            "loom:router_requests_total", {"backend": e.target, "method": method}
        )
        or 0
        for e in two_engines
        for method in ("Generate", "GenerateStream")
    )
    assert num_requests == 2 * len(PROMPTS) * 2 + 1


def test_model_info_tokenize_detokenize_and_load(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    a, b = two_engines
    router = start_router(a.target, b.target, max_request_bytes=64 * 1024)
    with Client(a.target) as direct, Client(router.target) as routed:
        info = routed.model_info()
        want = direct.model_info()
        assert info.max_request_bytes == 64 * 1024  # the router's limit, under the engines'
        want.max_request_bytes = info.max_request_bytes
        assert info == want
        assert routed.tokenize("Once upon", add_bos=True) == direct.tokenize(
            "Once upon", add_bos=True
        )
        assert routed.detokenize([1, 403, 407]) == direct.detokenize([1, 403, 407])
        with pytest.raises(grpc.RpcError) as err:
            routed.detokenize([1, 9999])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "[0, 512)" in err.value.details()
        routed.generate(list(range(3, 3 + 64)), max_tokens=2)
        done = serving_pb2.Load(num_kv_blocks=2 * info.num_kv_blocks, prefix_cache_queries=64)
        # Both engines summed, as of a poll after the request ended.
        wait_until(lambda: routed.load() == done, 5.0, "the poll after it")


@pytest.mark.parametrize(
    ("prompt", "sampling"),
    [
        ("", {}),
        ([1, 512], {}),
        ("Hi", {"temperature": -0.5}),
        ([1] * 500, {"max_tokens": 13}),
        ("Hi", {"stop": ["x" * 257]}),
        ("Hi", {"request_id": "r" * 129}),
    ],
)
def test_refusals_are_the_engines(
    two_engines: tuple[ServerHandle, ServerHandle],
    start_router: Callable[..., RouterHandle],
    prompt: str | list[int],
    sampling: dict,
) -> None:
    a, b = two_engines
    router = start_router(a.target, b.target)
    with Client(a.target) as direct, Client(router.target) as routed:
        with pytest.raises(grpc.RpcError) as want:
            direct.generate(prompt, **sampling)
        for call in (routed.generate, lambda *a, **k: list(routed.generate_stream(*a, **k))):
            with pytest.raises(grpc.RpcError) as got:
                call(prompt, **sampling)
            assert (got.value.code(), got.value.details()) == (
                want.value.code(),
                want.value.details(),
            )


def test_request_ids_are_unique_and_abort_finds_the_backend(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    router = start_router(*(e.target for e in two_engines))
    with Client(router.target) as client:
        stream = client.generate_stream("Once", max_tokens=400, ignore_eos=True, request_id="s1")
        first = next(stream)
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=2, request_id="s1")
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # Another tenant may use the same id.
        with Client(router.target, tenant="other") as other:
            assert other.generate("Hi", max_tokens=2, request_id="s1").request_id == "s1"
            assert other.abort(["s1"]) == []  # not theirs
        assert client.abort(["s1", "nope"]) == ["s1"]
        rest = list(stream)
    assert first.request_id == "s1"
    assert rest[-1].finish_reason == serving_pb2.FINISH_REASON_ABORT
    with pytest.raises(grpc.RpcError) as err, Client(router.target) as client:
        client.abort([""])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for engine in two_engines:
        wait_until(lambda e=engine: engine_is_idle(e.engine), 5.0, "engines idle")


def health_status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="loom.v1.Generation")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_health_reflection_and_drain(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    router = start_router(*(e.target for e in two_engines))
    assert health_status(router.target) == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(router.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [reply] = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"loom.v1.Generation", "grpc.health.v1.Health"} <= names
    with Client(router.target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=120, ignore_eos=True)
        deltas = [next(stream)]
        stopper = threading.Thread(target=router.stop, kwargs={"grace": 30.0})
        stopper.start()
        wait_until(
            lambda: health_status(router.target) == health_pb2.HealthCheckResponse.NOT_SERVING,
            2.0,
            "NOT_SERVING while draining",
        )
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        deltas.extend(stream)  # the call in flight runs to its end
        stopper.join(10)
    assert sum(len(d.token_ids) for d in deltas) == 120


def test_a_health_watch_ends_when_the_router_drains(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    router = start_router(*(e.target for e in two_engines))
    with grpc.insecure_channel(router.target) as channel:
        request = health_pb2.HealthCheckRequest(service="loom.v1.Generation")
        watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
        first = next(watch)
        stopper = threading.Thread(target=router.stop, kwargs={"grace": 30.0})
        stopper.start()
        rest = [reply.status for reply in watch]  # ends OK: no RpcError, no CANCELLED
        stopper.join(10)
    assert (first.status, rest) == (
        health_pb2.HealthCheckResponse.SERVING,
        [health_pb2.HealthCheckResponse.NOT_SERVING],
    )
    assert not stopper.is_alive()
