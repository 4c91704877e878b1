"""Calls that end early through the router end early on the backend too; backends that drain,
stop, hang or die get no new requests, never leave a call hanging, and rejoin when back."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import AsyncClient, Client
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from router.backend import BackendState
from router.server import RouterHandle
from tests.router.conftest import backend_state
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.serve_process import ServeProcess
from tests.server.test_cancellation import num_aborted, num_past_deadline

SERVE = [sys.executable, "-m", "frontend", "serve", "--num-kv-blocks", "256"]
LONG = {"max_tokens": 480, "ignore_eos": True}


def test_cancel_at_the_router_frees_the_backend_request_within_a_second(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    router = start_router(*(e.target for e in two_engines), policy="round_robin")

    async def run() -> float:
        async with AsyncClient(router.target) as client:
            started = [asyncio.Event() for _ in range(8)]

            async def one(i: int) -> int:
                num = 0
                async for delta in client.generate_stream(f"Once upon a time {i}", **LONG):
                    num += len(delta.token_ids)
                    started[i].set()
                return num

            tasks = [asyncio.create_task(one(i)) for i in range(8)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
            cancelled_at = time.monotonic()
            for task in tasks:
                task.cancel()
            while sum(num_aborted(e) for e in two_engines) < 8:
                assert time.monotonic() - cancelled_at < 1.0
                await asyncio.sleep(0.005)
            return time.monotonic() - cancelled_at

    assert asyncio.run(run()) < 1.0
    assert [num_aborted(e) for e in two_engines] == [4, 4]
    for engine in two_engines:
        wait_until(lambda e=engine: engine_is_idle(e.engine), 5.0, "every block free")


def test_the_deadline_travels_to_the_backend(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    router = start_router(*(e.target for e in two_engines))
    with Client(router.target) as client, pytest.raises(grpc.RpcError) as err:
        list(client.generate_stream("Once upon a time", timeout=0.5, **LONG))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The backend ends it either way: its own timer (finish reason "deadline") or the
    # router's cancel when the call's time ran out (an abort), whichever comes first.
    wait_until(
        lambda: sum(num_aborted(e) + num_past_deadline(e) for e in two_engines) == 1,
        5.0,
        "ended early there",
    )
    for engine in two_engines:
        wait_until(lambda e=engine: engine_is_idle(e.engine), 5.0, "every block free")


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_no_backend_serving_is_unavailable_and_not_serving(
    start_engine: Callable[..., ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    engine = start_engine()
    router = start_router(engine.target)
    assert health(router.target) == health_pb2.HealthCheckResponse.SERVING
    engine.stop(grace=0)
    wait_until(
        lambda: health(router.target) == health_pb2.HealthCheckResponse.NOT_SERVING,
        5.0,
        "NOT_SERVING once its only backend is gone",
    )
    with Client(router.target, timeout=5) as client:
        calls = [lambda: client.generate("Once"), lambda: client.tokenize("Once")]
        for call in [*calls, client.model_info, client.load]:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "no backend is serving" in err.value.details()


def test_a_draining_backend_finishes_its_calls_and_gets_no_new_ones(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    a, b = two_engines
    router = start_router(a.target, b.target, policy="round_robin")
    with Client(router.target) as client:
        streams = [client.generate_stream(f"Story {i}", max_tokens=200, ignore_eos=True,
                                          request_id=f"s{i}") for i in range(2)]  # fmt: skip
        for stream in streams:
            next(stream)
        stopper = threading.Thread(target=a.stop, kwargs={"grace": 30.0})
        stopper.start()
        wait_until(
            lambda: backend_state(router, a.target) is BackendState.DRAINING, 2.0, "draining"
        )
        before = b.engine.stats().prefix_cache_queries
        for i in range(4):
            assert client.generate(f"Hi {i}", max_tokens=2).usage.completion_tokens == 2
        assert b.engine.stats().prefix_cache_queries > before  # all four went to b
        for stream in streams:
            assert list(stream)[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
        stopper.join(10)


def stream_on(client: Client, router: RouterHandle, request_id: str) -> tuple[object, str]:
    stream = client.generate_stream("Once upon a time", request_id=request_id, **LONG)
    next(stream)
    backend = router.router.servicer.live[("default", request_id)].backend
    assert backend is not None
    return stream, backend.address


def test_killing_a_backend_mid_stream(
    start_engine: Callable[..., ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    process = ServeProcess(SERVE + ["--port", "0"])
    try:
        survivor = start_engine()
        router = start_router(process.target, survivor.target, policy="round_robin")
        with Client(router.target, timeout=30) as client:
            streams = [stream_on(client, router, f"s{i}") for i in range(4)]
            assert {address for _, address in streams} == {process.target, survivor.target}
            process.proc.kill()
            for stream, address in streams:
                if address == process.target:
                    with pytest.raises(grpc.RpcError) as err:
                        list(stream)
                    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                else:
                    stream.close()
            # Later requests succeed, on the survivor, even before a poll has noticed.
            for i in range(6):
                reply = client.generate(f"Later {i}", max_tokens=4)
                assert reply.usage.completion_tokens == 4
        wait_until(lambda: backend_state(router, process.target) is BackendState.DOWN, 5.0, "down")
        wait_until(lambda: engine_is_idle(survivor.engine), 5.0, "survivor idle")
    finally:
        process.stop()


def test_a_hung_backend_ends_its_calls_and_rejoins(
    start_engine: Callable[..., ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    process = ServeProcess(SERVE + ["--port", "0"])
    try:
        survivor = start_engine()
        router = start_router(
            process.target, survivor.target, policy="round_robin", health_check_timeout=0.5
        )
        with Client(router.target, timeout=60) as client:
            streams = [stream_on(client, router, f"h{i}") for i in range(2)]
            [hung] = [stream for stream, address in streams if address == process.target]
            os.kill(process.proc.pid, signal.SIGSTOP)  # alive, connected, silent
            stopped_at = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                list(hung)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "stopped answering" in err.value.details()
            assert time.monotonic() - stopped_at < 5.0  # two polls of 0.5 s, not forever
            assert client.generate("Meanwhile", max_tokens=4).usage.completion_tokens == 4
            os.kill(process.proc.pid, signal.SIGCONT)
            wait_until(
                lambda: backend_state(router, process.target) is BackendState.UP, 10.0, "rejoined"
            )
            for stream, address in streams:
                if address != process.target:
                    stream.close()
            # Round robin reaches it again.
            for i in range(2):
                assert client.generate(f"Back {i}", max_tokens=4).usage.completion_tokens == 4
        requests = router.router.metrics.registry.get_sample_value(
            "loom:router_requests_total", {"backend": process.target, "method": "Generate"}
        )
        assert requests == 1
    finally:
        if process.proc.poll() is None:
            os.kill(process.proc.pid, signal.SIGCONT)
        process.stop()


def test_a_call_refused_by_a_backend_that_began_draining_is_retried_on_another(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    a, b = two_engines
    # Polls far apart: the router learns that `a` drains only from the refusal itself.
    router = start_router(a.target, b.target, policy="round_robin", health_check_interval=60)
    with Client(a.target) as direct:
        held = direct.generate_stream("Once", **LONG)  # keeps `a` draining, not stopped
        next(held)
        stopper = threading.Thread(target=a.stop, kwargs={"grace": 30.0})
        stopper.start()
        wait_until(lambda: a.frontend.gate.draining, 5.0, "a drains")
        assert backend_state(router, a.target) is BackendState.UP  # not polled since
        with Client(router.target) as client:
            replies = [client.generate(f"Hi {i}", max_tokens=2) for i in range(2)]
        assert [r.usage.completion_tokens for r in replies] == [2, 2]
        retried = router.router.metrics.registry.get_sample_value(
            "loom:router_retries_total", {"backend": a.target}
        )
        assert retried == 1
        wait_until(
            lambda: backend_state(router, a.target) is BackendState.DRAINING, 2.0, "polled at once"
        )
        held.close()
        stopper.join(10)
