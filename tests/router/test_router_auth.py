"""Auth at the router: wrong keys stop there; the caller's key and tenant travel on to the
engines; a tenants file's quotas hold across the backends; TLS on both sides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from client import Client
from frontend.embedded import ServerHandle
from router.backend import BackendState
from router.server import RouterHandle
from serving.tenants import hash_key
from tests.router.conftest import backend_state
from tests.server.tls_certs import make_certificates

KEYS = {"sk-acme": "acme", "sk-bolt": "bolt", "sk-router": "router"}


def tenants_of(engine: ServerHandle) -> set[str]:
    return set(engine.engine.stats().tenants)


def router_key_file(tmp_path: Path) -> str:
    path = tmp_path / "router.key"
    path.write_text("sk-router\n")
    return str(path)


def test_wrong_keys_stop_at_the_router_and_good_ones_carry_their_tenant(
    start_engine: Callable[..., ServerHandle],
    start_router: Callable[..., RouterHandle],
    tmp_path: Path,
) -> None:
    engines = [start_engine(api_keys=KEYS), start_engine(api_keys=KEYS)]
    router = start_router(
        *(e.target for e in engines),
        api_keys=KEYS,
        backend_api_key_file=router_key_file(tmp_path),
        policy="round_robin",
    )
    for api_key, tenant, code in [
        (None, None, grpc.StatusCode.UNAUTHENTICATED),
        ("sk-wrong", None, grpc.StatusCode.UNAUTHENTICATED),
        ("sk-acme", "bolt", grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with Client(router.target, api_key=api_key, tenant=tenant) as client:
            for call in (lambda: client.generate("Hi", max_tokens=2), client.load):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == code
    assert not any(tenants_of(e) for e in engines)  # nothing reached an engine
    with Client(router.target, api_key="sk-acme") as client:
        for i in range(2):
            assert client.generate(f"Hi {i}", max_tokens=2).usage.completion_tokens == 2
    assert [tenants_of(e) for e in engines] == [{"acme"}, {"acme"}]


def test_without_keys_the_named_tenant_travels_on(
    two_engines: tuple[ServerHandle, ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    router = start_router(*(e.target for e in two_engines), policy="round_robin")
    for tenant in ("t1", "t2"):
        with Client(router.target, tenant=tenant) as client:
            client.generate("Hi", max_tokens=2)
    assert set.union(*(tenants_of(e) for e in two_engines)) == {"t1", "t2"}


def test_engines_that_check_keys_the_router_does_not(
    start_engine: Callable[..., ServerHandle],
    start_router: Callable[..., RouterHandle],
    tmp_path: Path,
) -> None:
    engine = start_engine(api_keys=KEYS)
    # Without a key of its own, the router cannot poll them: it says why.
    blind = start_router(engine.target)
    assert backend_state(blind, engine.target) is BackendState.DOWN
    with Client(blind.target, api_key="sk-acme") as client, pytest.raises(grpc.RpcError) as err:
        client.generate("Hi", max_tokens=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "UNAUTHENTICATED" in err.value.details()
    router = start_router(engine.target, backend_api_key_file=router_key_file(tmp_path))
    with Client(router.target, api_key="sk-wrong") as client, pytest.raises(grpc.RpcError) as err:
        client.generate("Hi", max_tokens=2)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the engine's answer
    with Client(router.target, api_key="sk-bolt") as client:
        assert client.generate("Hi", max_tokens=2).usage.completion_tokens == 2
    assert tenants_of(engine) == {"bolt"}


def test_quotas_hold_across_the_backends(
    two_engines: tuple[ServerHandle, ServerHandle],
    start_router: Callable[..., RouterHandle],
    tmp_path: Path,
) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.acme]\napi_key_sha256 = ["{hash_key("sk-acme")}"]\n'
        "max_concurrent_requests = 2\nmax_tokens_per_request = 480\n"
    )
    router = start_router(*(e.target for e in two_engines), tenants=str(tenants))
    with Client(router.target, api_key="sk-acme") as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Once upon a time", max_tokens=490)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_tokens_per_request (480)" in err.value.details()
        # As long as the model allows, so that both are still generating at the third call
        # even on a loaded machine.
        streams = [
            client.generate_stream(f"Story {i}", max_tokens=400, ignore_eos=True) for i in range(2)
        ]
        for stream in streams:
            next(stream)  # two in flight, on whichever backends
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_concurrent_requests (2)" in err.value.details()
        for stream in streams:
            list(stream)
        assert client.generate("Hi", max_tokens=2).usage.completion_tokens == 2
        # Every sequence counts: n = 3 is three requests in flight, n = 4 four times max_tokens.
        for n, max_tokens, limit in ((3, 2, "max_concurrent_requests (2)"),
                                     (2, 250, "max_tokens_per_request (480)")):  # fmt: skip
            with pytest.raises(grpc.RpcError) as err:
                client.generate("Hi", max_tokens=max_tokens, n=n)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert limit in err.value.details()
        assert len(client.generate("Hi", max_tokens=2, n=2).sequences) == 2


def test_tls_at_the_router_and_to_the_backends(
    start_engine: Callable[..., ServerHandle],
    start_router: Callable[..., RouterHandle],
    tmp_path: Path,
) -> None:
    certs = make_certificates(tmp_path / "tls")
    tls = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    engine = start_engine(**tls, tls_client_ca=str(certs.ca))  # mutual TLS
    router = start_router(
        engine.target,
        **tls,
        backend_tls_ca=str(certs.ca),
        backend_tls_cert=str(certs.client_cert),
        backend_tls_key=str(certs.client_key),
    )
    with Client(router.target, tls_ca=certs.ca) as client:
        assert client.generate("Hi", max_tokens=2).usage.completion_tokens == 2
    with Client(router.target) as plain, pytest.raises(grpc.RpcError) as err:
        plain.generate("Hi", max_tokens=2, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
