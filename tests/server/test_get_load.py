"""GetLoad: what a router polls. Exact figures from a real engine, answered while a step is
in progress (no engine lock), refused without a key, draining flagged."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from client import Client
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from tests.server.conftest import NUM_KV_BLOCKS, make_engine, wait_until


def test_idle_then_prefix_hits_exactly(server: ServerHandle) -> None:
    with Client(server.target) as client:
        assert client.load() == serving_pb2.Load(num_kv_blocks=NUM_KV_BLOCKS)
        prompt = list(range(3, 3 + 64))  # 64 tokens: 3 full blocks can hit, the 4th holds the last
        for _ in range(2):
            client.generate(prompt, max_tokens=4, temperature=0)
        load = client.load()
    assert (load.prefix_cache_queries, load.prefix_cache_hits) == (128, 48)
    assert load.prefix_cache_hit_rate == pytest.approx(48 / 128)
    assert (load.num_requests_running, load.num_requests_waiting) == (0, 0)
    assert load.num_kv_blocks_used == 0 and not load.draining


def test_running_requests_and_their_blocks(server: ServerHandle) -> None:
    with Client(server.target) as client:
        streams = [
            client.generate_stream(f"Once upon a time {i}", max_tokens=400, ignore_eos=True)
            for i in range(3)
        ]
        for stream in streams:
            next(stream)
        wait_until(lambda: client.load().num_requests_running == 3, 5.0, "3 running")
        assert client.load().num_kv_blocks_used >= 3
        for stream in streams:
            stream.close()
        wait_until(lambda: client.load().num_kv_blocks_used == 0, 5.0, "blocks freed")


class HeldWorker:
    """The real worker, whose steps wait until the test lets them go."""

    available = True
    session_epoch = 0

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self.entered = threading.Event()
        self.release = threading.Event()

    def execute(self, step_input: Any) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return self.worker.execute(step_input)

    def close(self) -> None:
        self.worker.close()


def test_answers_while_a_step_is_in_progress(start_server: Callable[..., ServerHandle]) -> None:
    engine = make_engine()
    held = engine.worker = HeldWorker(engine.worker)
    server = start_server(engine)
    with Client(server.target, timeout=2.0) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=4)
        thread = threading.Thread(target=lambda: list(stream))
        thread.start()
        assert held.entered.wait(10)
        try:
            load = client.load()  # the step holds the loop thread; GetLoad does not wait on it
        finally:
            held.release.set()
        thread.join(10)
        assert load.num_kv_blocks == NUM_KV_BLOCKS
        wait_until(lambda: client.load().prefix_cache_queries == 5, 5.0, "stats after the step")


def test_needs_a_key_when_the_server_checks_them(
    start_server: Callable[..., ServerHandle],
) -> None:
    server = start_server(api_keys={"sk-a": "acme"})
    with Client(server.target) as client, pytest.raises(grpc.RpcError) as err:
        client.load()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with Client(server.target, api_key="sk-a") as client:
        assert client.load().num_kv_blocks == NUM_KV_BLOCKS


def test_draining_is_flagged(server: ServerHandle) -> None:
    with Client(server.target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=200, ignore_eos=True)
        next(stream)
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
        stopper.start()
        wait_until(lambda: client.load().draining, 5.0, "draining")
        list(stream)
        stopper.join(10)
