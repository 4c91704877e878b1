"""A server with a tenants file: hashed keys, and each quota refusing exactly what is over it,
before any work, with the limit named and `retry-after-ms` where waiting helps."""

from __future__ import annotations

import grpc
import pytest

from client import Client
from frontend.embedded import ServerHandle
from serving.tenants import hash_key
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.test_metrics_and_auth import scrape, value

TENANTS = f"""\
[tenants.acme]
api_key_sha256 = ["{hash_key("key-acme")}"]
max_concurrent_requests = 2
max_tokens_per_request = 60
max_tokens_per_minute = 60

[tenants.bolt]
api_key_sha256 = ["{hash_key("key-bolt")}"]
"""


@pytest.fixture
def server(start_server, tmp_path) -> ServerHandle:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    return start_server(tenants=str(path), metrics_port=0)


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def retry_after_ms(err: grpc.RpcError) -> int | None:
    found = [int(m.value) for m in err.trailing_metadata() or () if m.key == "retry-after-ms"]
    return found[0] if found else None


def test_keys_are_checked_by_hash(server: ServerHandle) -> None:
    with Client(server.target, api_key="key-bolt") as client:
        assert client.generate("Hi", max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    for api_key, tenant, code in (
        (None, None, grpc.StatusCode.UNAUTHENTICATED),
        ("key-nope", None, grpc.StatusCode.UNAUTHENTICATED),
        (hash_key("key-bolt"), None, grpc.StatusCode.UNAUTHENTICATED),  # the hash is no key
        ("key-bolt", "acme", grpc.StatusCode.PERMISSION_DENIED),
    ):
        with Client(server.target, api_key=api_key, tenant=tenant) as client:
            assert refused(lambda c=client: c.generate("Hi", max_tokens=2)).code() == code
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")


@pytest.fixture
def concurrency_server(start_server, tmp_path) -> ServerHandle:
    """acme's only limit is two calls at a time, so its streams may run long."""
    path = tmp_path / "tenants.toml"
    path.write_text(
        f'[tenants.acme]\napi_key_sha256 = ["{hash_key("key-acme")}"]\n'
        "max_concurrent_requests = 2\n\n"
        f'[tenants.bolt]\napi_key_sha256 = ["{hash_key("key-bolt")}"]\n'
    )
    return start_server(tenants=str(path), metrics_port=0)


def test_concurrency_refuses_the_third_stream_until_one_ends(
    concurrency_server: ServerHandle,
) -> None:
    server = concurrency_server
    acme = Client(server.target, api_key="key-acme")
    # As long as the model allows: the streams must outlast every check below, which take a
    # few engine steps at most.
    streams = [acme.generate_stream([1, 5, 6], max_tokens=509, ignore_eos=True) for _ in range(2)]
    for stream in streams:
        next(stream)  # both admitted and running
    err = refused(lambda: acme.generate([1, 5], max_tokens=2))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_concurrent_requests (2)" in err.details()
    assert retry_after_ms(err) is None  # no date can be put on a slot freeing
    with Client(server.target, api_key="key-bolt") as bolt:  # another tenant is untouched
        assert bolt.generate([1, 5], max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    streams[0].close()
    wait_until(lambda: server.frontend.quotas.num_in_flight("acme") == 1, 5.0, "a slot freed")
    assert acme.generate([1, 5], max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    assert list(streams[1])[-1].usage.completion_tokens == 509
    # A request's sequences count one each: n = 3 is over the two slots even when all are free.
    err = refused(lambda: acme.generate([1, 5], max_tokens=2, n=3))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "this call adds 3" in err.details()
    assert len(acme.generate([1, 5], max_tokens=2, n=2).sequences) == 2
    acme.close()
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
    samples = scrape(server.metrics_port)
    rejections = "loom:quota_rejections_total"
    assert value(samples, rejections, tenant="acme", limit="max_concurrent_requests") == 2
    assert value(samples, rejections, tenant="bolt", limit="max_concurrent_requests") == 0


def test_the_per_request_cap_counts_prompt_plus_max_tokens(server: ServerHandle) -> None:
    with Client(server.target, api_key="key-acme") as acme:
        assert acme.generate([1] * 10, max_tokens=50, ignore_eos=True).usage.completion_tokens == 50
        err = refused(lambda: acme.generate([1] * 10, max_tokens=51))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_tokens_per_request (60)" in err.details()
    assert retry_after_ms(err) is None


def test_the_token_rate_refuses_with_a_retry_hint_and_charges_output(server: ServerHandle) -> None:
    with Client(server.target, api_key="key-acme") as acme:
        # 20 prompt + 20 generated tokens of the 60 a minute: 20 left (and 1 a second back).
        reply = acme.generate([1] * 20, max_tokens=20, ignore_eos=True)
        assert reply.usage.completion_tokens == 20
        err = refused(lambda: acme.generate([1] * 50, max_tokens=1))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_tokens_per_minute (60)" in err.details()
    # 30 tokens short at 1 token/s; whatever refilled while the first ran came off that.
    assert 20_000 < retry_after_ms(err) <= 30_000
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
    samples = scrape(server.metrics_port)
    name = "loom:quota_rejections_total"
    assert value(samples, name, tenant="acme", limit="max_tokens_per_minute") == 1
    assert value(samples, "loom:prompt_tokens_total", tenant="acme") == 20  # the refused: none


def test_the_tenant_default_priority_applies_when_a_request_sets_none(start_server, tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text(f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\npriority = 7\n')
    server = start_server(tenants=str(path))
    live = server.engine.scheduler.requests
    with Client(server.target, api_key="k") as client:
        for request_id, priority, expected in (("unset", None, 7), ("zero", 0, 0), ("neg", -3, -3)):
            stream = client.generate_stream(
                "Hi", max_tokens=400, ignore_eos=True, request_id=request_id, priority=priority
            )
            next(stream)  # running: the scheduler holds it
            assert live[f"acme/{request_id}"].priority == expected
            stream.close()
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")
