"""Deadlines, a full queue, a request that can never fit, and a failing engine step."""

from __future__ import annotations

import threading

import grpc
import pytest

from client import Client, build_request
from frontend.embedded import ServerHandle
from loompb import serving_pb2_grpc
from scheduler import Engine
from tests.server.conftest import engine_is_idle, make_engine, wait_until


def test_deadline_aborts_and_frees_blocks(server: ServerHandle) -> None:
    with Client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Once upon a time", max_tokens=480, ignore_eos=True, timeout=0.05)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: engine_is_idle(server.engine), 5.0, "the request gone, blocks free")
        with pytest.raises(grpc.RpcError) as err:
            list(client.generate_stream("Once", max_tokens=480, ignore_eos=True, timeout=0.05))
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_until(lambda: engine_is_idle(server.engine), 5.0, "the request gone, blocks free")
        assert client.generate("Hi", max_tokens=3, ignore_eos=True).usage.completion_tokens == 3


class HeldEngine(Engine):
    """The real engine, whose loop waits before each step while `go` is clear: what runs
    stays running and what arrives stays queued, for as long as a test needs."""

    go: threading.Event

    def step(self):
        self.go.wait()
        return super().step()


def held_engine(**kwargs) -> HeldEngine:
    plain = make_engine(**kwargs)
    engine = HeldEngine(plain.worker, plain.tokenizer, plain.config)
    engine.go = threading.Event()
    engine.go.set()
    return engine


def test_full_queue_is_resource_exhausted(start_server) -> None:
    # One request runs at a time and two may wait: the fourth finds the queue full. Once the
    # first runs the loop is held, so it cannot finish and hand its seat to a waiting one.
    engine = held_engine(max_num_seqs=1, max_queued_requests=2)
    server = start_server(engine)
    try:
        with grpc.insecure_channel(server.target) as channel:
            stub = serving_pb2_grpc.GenerationStub(channel)
            # A streaming call starts when made, not when first read.
            calls = [stub.GenerateStream(build_request("Story", max_tokens=400, ignore_eos=True))]
            wait_until(lambda: engine.stats().num_running == 1, 5.0, "one request running")
            engine.go.clear()
            calls += [
                stub.GenerateStream(build_request(f"Story {i}", max_tokens=400, ignore_eos=True))
                for i in range(2)
            ]
            wait_until(lambda: engine.stats().num_waiting == 2, 5.0, "two requests waiting")
            with pytest.raises(grpc.RpcError) as err:
                stub.Generate(build_request("One too many", max_tokens=4))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "queue is full" in err.value.details()
            engine.go.set()
            for call in calls:
                call.cancel()
    finally:
        engine.go.set()  # a held loop would never stop
    wait_until(lambda: engine_is_idle(engine), 5.0, "all aborted, blocks free")


def test_request_that_never_fits_the_kv_cache(start_server) -> None:
    server = start_server(make_engine(num_kv_blocks=4))  # 64 tokens in all
    with Client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Once upon a time", max_tokens=100)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.generate("Once", max_tokens=8).usage.completion_tokens >= 1


class StepFaults(Engine):
    """The real engine, with a switch that makes whole steps raise: what a bug outside any
    one request's processing looks like to the loop."""

    num_failing_steps = 0

    def step(self):
        if self.num_failing_steps > 0 and self.has_unfinished():
            self.num_failing_steps -= 1
            raise RuntimeError("injected step failure")
        return super().step()


def faulty_engine(**kwargs) -> StepFaults:
    plain = make_engine(**kwargs)
    return StepFaults(plain.worker, plain.tokenizer, plain.config)


def test_failed_step_fails_its_requests_and_serving_goes_on(start_server) -> None:
    engine = faulty_engine()
    server = start_server(engine, max_step_failures=3)
    with Client(server.target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=400, ignore_eos=True)
        next(stream)
        engine.num_failing_steps = 1
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "injected step failure" in err.value.details()
        wait_until(lambda: engine_is_idle(engine), 5.0, "the failed request's blocks freed")
        reply = client.generate("Once upon a time", max_tokens=5, ignore_eos=True)
        assert reply.usage.completion_tokens == 5
    assert server.frontend.async_engine.alive


def test_engine_that_keeps_failing_turns_not_serving(start_server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    engine = faulty_engine()
    server = start_server(engine, max_step_failures=2)
    engine.num_failing_steps = 1_000
    with Client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=4)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        # The abort that cleans up after it fails too: two failed steps in a row.
        wait_until(lambda: not server.frontend.async_engine.alive, 5.0, "the loop gave up")
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=4)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
