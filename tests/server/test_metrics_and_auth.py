"""Prometheus series that match the traffic sent; API keys and tenants."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import Client
from frontend.embedded import ServerHandle
from tests.server.conftest import engine_is_idle, wait_until

MODEL = "stories260K"


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _key(**labels: str) -> frozenset:
    return frozenset(dict(model=MODEL, **labels).items())


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, _key(**labels)), 0.0)


def test_metrics_match_the_traffic(start_server) -> None:
    server = start_server(metrics_port=0)
    # (tenant, prompt, max_tokens): every request runs to max_tokens.
    traffic = [("alice", "Once upon a time", 7), ("alice", "The dog", 5), ("bob", "Hi", 9)]
    prompt_tokens = {"alice": 0, "bob": 0}
    for tenant, prompt, max_tokens in traffic:
        with Client(server.target, tenant=tenant) as client:
            reply = client.generate(prompt, max_tokens=max_tokens, ignore_eos=True)
        assert reply.usage.completion_tokens == max_tokens
        prompt_tokens[tenant] += reply.usage.prompt_tokens
    # A repeated 40-token prompt hits the prefix cache for its two full blocks.
    long_prompt = list(range(3, 43))
    with Client(server.target, tenant="bob") as client:
        for _ in range(2):
            client.generate(long_prompt, max_tokens=1)
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "engine idle")

    samples = scrape(server.metrics_port)
    assert value(samples, "loom:prompt_tokens_total", tenant="alice") == prompt_tokens["alice"]
    assert value(samples, "loom:prompt_tokens_total", tenant="bob") == prompt_tokens["bob"] + 80
    assert value(samples, "loom:generation_tokens_total", tenant="alice") == 12
    assert value(samples, "loom:generation_tokens_total", tenant="bob") == 11
    assert (
        value(samples, "loom:request_finished_total", tenant="alice", finish_reason="length") == 2
    )
    for tenant, num_requests, num_tokens in (("alice", 2, 12), ("bob", 3, 11)):
        for name in ("time_to_first_token", "e2e_request_latency", "request_queue_time"):
            count = value(samples, f"loom:{name}_seconds_count", tenant=tenant)
            assert count == num_requests, (name, tenant)
        # Every token after a request's first has one inter-token gap.
        itl = value(samples, "loom:inter_token_latency_seconds_count", tenant=tenant)
        assert itl == num_tokens - num_requests
    assert value(samples, "loom:prefix_cache_hits_total") == 32
    assert value(samples, "loom:prefix_cache_queries_total") >= 80
    for tenant in ("alice", "bob"):
        samples_of = {"tenant": tenant}
        assert ("loom:num_requests_running", _key(**samples_of)) in samples
        assert value(samples, "loom:num_requests_running", **samples_of) == 0
        assert value(samples, "loom:num_requests_waiting", **samples_of) == 0
    # The fair-share charge: w_in 1 per prompt token computed, w_out 2 per generated token.
    assert value(samples, "loom:tenant_service_tokens_total", tenant="alice") == (
        prompt_tokens["alice"] + 2 * 12
    )
    assert value(samples, "loom:kv_cache_usage_perc") == 0
    assert ("loom:num_preemptions_total", frozenset({("model", MODEL)})) in samples


def test_running_and_kv_usage_gauges_while_busy(start_server) -> None:
    server = start_server(metrics_port=0)
    with Client(server.target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=300, ignore_eos=True)
        next(stream)
        samples = scrape(server.metrics_port)
        stream.close()
    assert value(samples, "loom:num_requests_running", tenant="default") == 1
    assert value(samples, "loom:kv_cache_usage_perc") > 0


@pytest.fixture
def keyed_server(start_server, tmp_path) -> ServerHandle:
    from serving.auth import load_api_keys

    keys = tmp_path / "keys"
    keys.write_text("# key tenant\nkey-a alice\nkey-b bob\n")
    return start_server(api_keys=load_api_keys(keys), metrics_port=0)


@pytest.mark.parametrize(
    ("api_key", "tenant", "code"),
    [
        (None, None, grpc.StatusCode.UNAUTHENTICATED),
        ("nope", None, grpc.StatusCode.UNAUTHENTICATED),
        ("key-a", "bob", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_api_keys_refuse(keyed_server: ServerHandle, api_key, tenant, code) -> None:
    with Client(keyed_server.target, api_key=api_key, tenant=tenant) as client:
        for call in (lambda: client.generate("Hi"), client.model_info):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == code
    wait_until(lambda: engine_is_idle(keyed_server.engine), 5.0, "the engine idle")


def test_api_key_names_the_tenant(keyed_server: ServerHandle) -> None:
    with Client(keyed_server.target, api_key="key-b") as client:
        assert client.generate("Hi", max_tokens=3, ignore_eos=True).usage.completion_tokens == 3
    samples = scrape(keyed_server.metrics_port)
    assert value(samples, "loom:generation_tokens_total", tenant="bob") == 3
    assert value(samples, "loom:generation_tokens_total", tenant="default") == 0


def test_api_keys_file_errors(tmp_path) -> None:
    from serving.auth import load_api_keys

    bad = tmp_path / "keys"
    for text, words in (
        ("key-a\n", "expected `KEY TENANT`"),
        ("k alice\nk bob\n", "repeated"),
        ("k bad/tenant\n", "tenant must match"),
        ("# nothing\n", "no API keys"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            load_api_keys(bad)
