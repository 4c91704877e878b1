"""Deadlines over loopback: `deadline_ms`, the call's own gRPC deadline and a tenant's default
bound a request; one that cannot finish by its deadline ends with DEADLINE_EXCEEDED, frees its
blocks, and /metrics counts deadlines met and missed per tenant."""

from __future__ import annotations

import grpc
import pytest

from client import Client
from serving.tenants import hash_key
from tests.server.conftest import engine_is_idle, make_engine, wait_until
from tests.server.test_metrics_and_auth import scrape, value

LONG = {"max_tokens": 480, "ignore_eos": True}  # at least 480 steps: far over 100 ms here


def warm(client: Client) -> None:
    """A first request, so the engine has measured its step time."""
    assert client.generate([1, 50, 60], max_tokens=8, ignore_eos=True).usage.completion_tokens == 8


def test_deadline_policy_ends_a_request_that_cannot_finish_after_one_step_at_most(
    start_server,
) -> None:
    # With nothing else running, the deadline policy lets a request run a step before it
    # predicts (only running steps measure the step time; scheduler/deadlines.py), so the
    # hopeless request computes its prompt and first token at most. (With requests running it
    # ends before any step: tests/scheduler/test_deadlines.py.)
    server = start_server(make_engine(queue_policy="deadline"), metrics_port=0)
    with Client(server.target, tenant="acme") as client:
        warm(client)
        with pytest.raises(grpc.RpcError) as caught:
            client.generate([1, 70, 80], deadline_ms=100, **LONG)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "cannot finish by its deadline" in caught.value.details()
        reply = client.generate([1, 90, 100], deadline_ms=20_000, max_tokens=5, ignore_eos=True)
        assert reply.usage.completion_tokens == 5
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
    samples = scrape(server.metrics_port)
    assert value(samples, "loom:request_deadlines_total", tenant="acme", outcome="missed") == 1
    assert value(samples, "loom:request_deadlines_total", tenant="acme", outcome="met") == 1
    assert value(samples, "loom:generation_tokens_total", tenant="acme") - (8 + 5) in (0, 1)


def test_the_calls_grpc_deadline_is_the_engines_too(start_server) -> None:
    server = start_server(make_engine(queue_policy="deadline"), metrics_port=0)
    with Client(server.target) as client:
        warm(client)
        # 500 steps of a millisecond or more cannot fit in 0.4 s: the engine ends the request
        # after its first step (nothing else runs), or at the deadline if steps are slower.
        with pytest.raises(grpc.RpcError) as caught:
            client.generate([1, 70, 80], timeout=0.4, max_tokens=500, ignore_eos=True)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
    # The engine held the call's deadline as the request's: it counts it missed.
    samples = scrape(server.metrics_port)
    assert value(samples, "loom:request_deadlines_total", tenant="default", outcome="missed") == 1


def test_a_tenants_default_deadline_ends_its_requests_once_passed_under_fcfs(
    start_server, tmp_path
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(
        f'[tenants.hurried]\napi_key_sha256 = ["{hash_key("key-h")}"]\ndeadline_ms = 50\n\n'
        f'[tenants.patient]\napi_key_sha256 = ["{hash_key("key-p")}"]\n'
    )
    engine = make_engine(queue_policy="fcfs", num_threads=1)  # a tiny model: one is fastest
    server = start_server(engine, tenants=str(path), metrics_port=0)
    with Client(server.target, api_key="key-h") as hurried:
        with pytest.raises(grpc.RpcError) as caught:
            hurried.generate([1, 70, 80], **LONG)
        assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "its deadline passed" in caught.value.details()
        # Its own deadline_ms replaces the tenant's default.
        reply = hurried.generate([1, 70, 80], deadline_ms=60_000, max_tokens=40, ignore_eos=True)
        assert reply.usage.completion_tokens == 40
    with Client(server.target, api_key="key-p") as patient:  # no deadline: takes its time
        reply = patient.generate([1, 70, 80], max_tokens=120, ignore_eos=True)
        assert reply.usage.completion_tokens == 120
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
    samples = scrape(server.metrics_port)
    assert value(samples, "loom:request_deadlines_total", tenant="hurried", outcome="missed") == 1
    assert value(samples, "loom:request_deadlines_total", tenant="hurried", outcome="met") == 1
    assert value(samples, "loom:request_deadlines_total", tenant="patient", outcome="met") == 0


def test_deadline_ms_must_be_at_least_one(server) -> None:
    with Client(server.target) as client, pytest.raises(grpc.RpcError) as caught:
        client.generate("Hi", deadline_ms=0)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "deadline_ms must be >= 1, got 0"
