"""Callers cannot grow /metrics, and tenant names stay off it where the operator says: on a
server without keys the tenants callers name beyond the first few share one `other` label; a
reloaded tenants file takes the series of the tenants that left it; `--metrics-tenant-labels
none` publishes no tenant name; /metrics binds where `--metrics-host` says and speaks mutual
TLS with `--metrics-tls`. The router's series name no tenant at all."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import Client
from frontend.embedded import ServerHandle
from frontend.tenant_labels import MAX_NAMED_CALLERS
from router.server import serve_router_in_thread
from serving.tenants import hash_key
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.tls_certs import make_certificates

NUM_CALLERS = 1000


def metrics_text(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def tenant_values(text: str) -> dict[str, float]:
    """Finished requests by tenant label."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loom:request_finished_total":
                tenant = sample.labels["tenant"]
                found[tenant] = found.get(tenant, 0.0) + sample.value
    return found


def generate_as(target: str, tenant: str, api_key: str | None = None) -> None:
    with Client(target, tenant=tenant if api_key is None else None, api_key=api_key) as client:
        assert client.generate([1, 5], max_tokens=1).usage.completion_tokens == 1


def test_a_thousand_caller_named_tenants_leave_metrics_small(start_server) -> None:
    server = start_server(metrics_port=0)
    names = [f"caller-{i:04d}" for i in range(NUM_CALLERS)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: generate_as(server.target, name), names))
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "the engine idle")
    text = metrics_text(server.metrics_port)
    assert len(text.encode()) < 100_000, len(text.encode())
    finished = tenant_values(text)
    assert sum(finished.values()) == NUM_CALLERS
    named = set(finished) - {"other"}
    # `default` shows from the start and takes one of the named labels.
    assert len(named) == MAX_NAMED_CALLERS - 1 and named <= set(names)
    assert finished["other"] == NUM_CALLERS - len(named)


TENANTS = "".join(
    f'[tenants.{name}]\napi_key_sha256 = ["{hash_key(f"key-{name}")}"]\n\n'
    for name in ("acme", "bolt")
)


def test_a_reload_drops_the_series_of_a_tenant_that_left(start_server, tmp_path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    server: ServerHandle = start_server(tenants=str(path), metrics_port=0)
    for name in ("acme", "bolt"):
        generate_as(server.target, name, api_key=f"key-{name}")
    before = metrics_text(server.metrics_port)
    assert 'tenant="bolt"' in before and 'tenant="acme"' in before
    path.write_text(TENANTS.split("[tenants.bolt]")[0])
    assert server.frontend.reload_tenants()
    after = metrics_text(server.metrics_port)
    assert 'tenant="bolt"' not in after
    assert tenant_values(after) == {"acme": 1.0}


def test_no_tenant_name_is_published_with_labels_none(start_server, tmp_path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    server = start_server(tenants=str(path), metrics_port=0, metrics_tenant_labels="none")
    for name in ("acme", "bolt"):
        generate_as(server.target, name, api_key=f"key-{name}")
    text = metrics_text(server.metrics_port)
    assert "acme" not in text and "bolt" not in text
    assert tenant_values(text) == {"all": 2.0}


def test_metrics_bind_where_told_and_speak_mutual_tls(start_server, tmp_path) -> None:
    certs = make_certificates(tmp_path)
    server = start_server(
        metrics_port=0,
        metrics_host="127.0.0.2",  # another loopback address than the API's
        metrics_tls=True,
        tls_cert=str(certs.server_cert),
        tls_key=str(certs.server_key),
        tls_client_ca=str(certs.ca),
    )
    port = server.metrics_port
    url = f"https://127.0.0.2:{port}/metrics"
    with pytest.raises(urllib.error.URLError):  # not on the API's address
        metrics_text(port)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # not over plain HTTP
        metrics_text(port, host="127.0.0.2")
    anonymous = ssl.create_default_context(cafile=str(certs.ca))
    anonymous.check_hostname = False
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(url, timeout=10, context=anonymous).read()
    scraper = ssl.create_default_context(cafile=str(certs.ca))
    scraper.check_hostname = False
    scraper.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    with urllib.request.urlopen(url, timeout=10, context=scraper) as reply:
        assert b"loom:kv_cache_blocks" in reply.read()


def test_the_routers_series_name_no_tenant(start_server) -> None:
    engine = start_server()
    router = serve_router_in_thread(backend=(engine.target,), metrics_port=0)
    try:
        generate_as(router.target, "first")
        size = len(metrics_text(router.metrics_port).splitlines())
        for i in range(20):
            generate_as(router.target, f"caller-{i}")
        text = metrics_text(router.metrics_port)
        assert "caller-" not in text and "first" not in text
        assert len(text.splitlines()) == size  # the same series, counting more
    finally:
        router.stop(grace=0)
