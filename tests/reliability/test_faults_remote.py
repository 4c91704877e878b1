"""Faults of a remote worker, between a real engine server and a real worker server: a step
the worker fails (INTERNAL for its requests, the others go on), non-finite logits (only the
rows they hit), a step that stalls past --worker-timeout and a dropped connection (every
request in flight UNAVAILABLE, health NOT_SERVING until the worker answers again, then the
same tokens as a clean run). No block is held after any of them."""

from __future__ import annotations

import math

import grpc
import pytest

from client import Client
from loompb import serving_pb2_grpc
from tests.reliability.conftest import (
    NOT_SERVING,
    PROMPTS,
    SERVING,
    assert_idle,
    clean_tokens,
    code_of,
    greedy,
    health,
    open_stream,
    tokens_of,
)
from tests.server.conftest import wait_until


def test_a_step_the_worker_fails_fails_its_requests_only(start_remote) -> None:
    rig = start_remote(max_step_failures=3)
    with grpc.insecure_channel(rig.server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        running = open_stream(stub, PROMPTS[0], 400)
        next(running)
        rig.worker.fail_next(1)
        with pytest.raises(grpc.RpcError) as failed:
            tokens_of(running)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "injected worker fault" in failed.value.details()
    assert_idle(rig.server)
    assert health(rig.server.target) == SERVING
    with Client(rig.server.target) as client:
        assert greedy(client, PROMPTS[1], 20) == clean_tokens(PROMPTS[1], 20)


def test_non_finite_logits_fail_only_their_rows_across_the_wire(start_remote) -> None:
    rig = start_remote(poison=math.nan)
    with grpc.insecure_channel(rig.server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        poisoned = open_stream(stub, PROMPTS[0], 40, request_id="poison-2")
        others = [open_stream(stub, prompt, 40) for prompt in PROMPTS[1:3]]
        with pytest.raises(grpc.RpcError) as failed:
            tokens_of(poisoned)
        assert failed.value.code() == grpc.StatusCode.INTERNAL
        assert "not finite" in failed.value.details()
        for call, prompt in zip(others, PROMPTS[1:3], strict=True):
            assert tokens_of(call) == clean_tokens(prompt, 40)
    assert_idle(rig.server)
    assert health(rig.server.target) == SERVING


def test_a_step_stalled_past_the_worker_timeout_and_the_recovery(start_remote) -> None:
    rig = start_remote()
    with grpc.insecure_channel(rig.server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        calls = [open_stream(stub, prompt, 400) for prompt in PROMPTS[:3]]
        for call in calls:
            next(call)
        rig.worker.stall_next()
        for call in calls:  # the step outlives --worker-timeout: every request in flight
            assert code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert rig.worker.stalled.is_set()
        assert health(rig.server.target) == NOT_SERVING
        refused = open_stream(stub, PROMPTS[3], 8)
        assert code_of(refused) == grpc.StatusCode.UNAVAILABLE
        assert_idle(rig.server)  # nothing is held while the worker is away
        rig.worker.release()
        wait_until(lambda: health(rig.server.target) == SERVING, 15.0, "the worker back")
    with Client(rig.server.target) as client:
        for prompt in PROMPTS[:3]:
            assert greedy(client, prompt, 30) == clean_tokens(prompt, 30)
    assert_idle(rig.server)


def test_a_dropped_connection_and_the_recovery(start_remote) -> None:
    rig = start_remote()
    with grpc.insecure_channel(rig.server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        calls = [open_stream(stub, prompt, 400) for prompt in PROMPTS[:3]]
        for call in calls:
            next(call)
        # Held on the worker, a step is surely on the wire when the connection goes.
        rig.worker.stall_next()
        wait_until(rig.worker.stalled.is_set, 5.0, "a step held on the worker")
        rig.proxy.drop()
        for call in calls:
            assert code_of(call) == grpc.StatusCode.UNAVAILABLE
        assert rig.proxy.num_dropped >= 2
        rig.worker.release()
        wait_until(lambda: health(rig.server.target) == SERVING, 15.0, "reconnected")
    assert_idle(rig.server)
    with Client(rig.server.target) as client:
        for prompt in PROMPTS[3:6]:
            assert greedy(client, prompt, 30) == clean_tokens(prompt, 30)
    assert_idle(rig.server)
