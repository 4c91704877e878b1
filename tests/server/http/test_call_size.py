"""A call's size is bounded as a whole: a completion with many prompts creates prompts x n
engine sequences, at most --max-prompts-per-request of them, and the tenant's quotas count
every sequence of the call (its prompts and their n), all refused before any work."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from frontend.config import DEFAULT_MAX_PROMPTS_PER_REQUEST
from frontend.embedded import ServerHandle
from serving.tenants import hash_key
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.http.conftest import held_engine

TENANTS = f"""\
[tenants.acme]
api_key_sha256 = ["{hash_key("key-acme")}"]
max_tokens_per_request = 100

[tenants.bolt]
api_key_sha256 = ["{hash_key("key-bolt")}"]
max_concurrent_requests = 4
"""
PROMPT = [5, 6]  # two tokens, no BOS added to token ids


def post(server: ServerHandle, body: dict, **headers: str) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{server.base_url}/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def tenants_server(start_server, tmp_path) -> ServerHandle:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    return start_server(held_engine(), tenants=str(path), http_port=0)


def test_a_20000_prompt_body_is_refused_before_any_work_and_another_tenant_runs_alone(
    start_server,
) -> None:
    engine = held_engine()  # takes no step until told: whatever is queued stays queued
    server = start_server(engine, http_port=0)
    flood = {"prompt": [[5]] * 20_000, "max_tokens": 1, "n": 16}
    status, body = post(server, flood, **{"x-loom-tenant": "flood"})
    error = body["error"]
    assert status == 400 and error["code"] == "max_prompts_per_request"
    assert error["param"] == "prompt" and error["type"] == "invalid_request_error"
    assert "20000 prompts x n (16) = 320000 sequences" in error["message"]
    assert f"max_prompts_per_request ({DEFAULT_MAX_PROMPTS_PER_REQUEST})" in error["message"]
    assert engine.stats().num_waiting == 0 and not engine.has_unfinished()
    # Another tenant's request is then the only one queued: it waits behind nothing.
    probe = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(post, server, probe, **{"x-loom-tenant": "probe"})
        wait_until(lambda: engine.stats().num_waiting == 1, 10.0, "the probe queued")
        assert set(engine.stats().tenants) == {"probe"}
        engine.running.set()
        status, body = reply.result()
    assert status == 200 and body["usage"]["completion_tokens"] == 4
    wait_until(lambda: engine_is_idle(engine), 5.0, "the engine idle")


def test_prompts_times_n_is_bounded_and_one_prompts_n_is_max_ns(start_server) -> None:
    server = start_server(http_port=0, max_prompts_per_request=4)
    for prompts, n in ((5, 1), (2, 3), (3, 2)):
        status, body = post(server, {"prompt": [PROMPT] * prompts, "max_tokens": 1, "n": n})
        assert status == 400 and body["error"]["code"] == "max_prompts_per_request", (prompts, n)
        assert "max_prompts_per_request (4)" in body["error"]["message"]
    for prompts, n in ((4, 1), (2, 2), (1, 16)):
        status, body = post(server, {"prompt": [PROMPT] * prompts, "max_tokens": 1, "n": n})
        assert status == 200 and len(body["choices"]) == prompts * n, (prompts, n, body)
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "the engine idle")


def test_the_per_request_cap_counts_every_prompt_and_sequence(tenants_server) -> None:
    tenants_server.engine.running.set()
    acme = bearer("key-acme")
    # Ten prompts of 2 tokens, max_tokens 9 each: 11 per prompt, 110 for the call.
    status, body = post(tenants_server, {"prompt": [PROMPT] * 10, "max_tokens": 9}, **acme)
    error = body["error"]
    assert status == 429 and error["code"] == "max_tokens_per_request"
    assert "10 prompts (20 tokens) + max_tokens (9) x 10 sequences" in error["message"]
    # Five prompts x n 3 x 6 tokens: 10 + 90 = 100, at the cap; n 4 goes over it.
    call = {"prompt": [PROMPT] * 5, "max_tokens": 6, "n": 3, "ignore_eos": True}
    status, body = post(tenants_server, call, **acme)
    assert status == 200 and body["usage"]["completion_tokens"] == 90
    status, body = post(tenants_server, {**call, "n": 4}, **acme)
    assert status == 429 and "x 20 sequences" in body["error"]["message"]
    wait_until(lambda: engine_is_idle(tenants_server.engine), 5.0, "the engine idle")


def test_the_concurrency_quota_counts_sequences_not_calls(tenants_server) -> None:
    engine = tenants_server.engine
    bolt = bearer("key-bolt")
    status, body = post(tenants_server, {"prompt": "Hi", "max_tokens": 2, "n": 5}, **bolt)
    assert status == 429 and body["error"]["code"] == "max_concurrent_requests"
    assert "this call adds 5" in body["error"]["message"]
    with ThreadPoolExecutor(2) as pool:
        # Two prompts x n 2: four sequences, queued (the engine holds them).
        held = pool.submit(post, tenants_server, {"prompt": [PROMPT] * 2, "n": 2}, **bolt)
        wait_until(lambda: engine.stats().num_waiting == 4, 10.0, "four sequences queued")
        status, body = post(tenants_server, {"prompt": "Hi", "max_tokens": 2}, **bolt)
        assert status == 429 and body["error"]["code"] == "max_concurrent_requests"
        assert "4 sequences in flight" in body["error"]["message"]
        engine.running.set()
        status, body = held.result()
        assert status == 200 and len(body["choices"]) == 4
    # The call ended: its four slots are free again.
    status, body = post(tenants_server, {"prompt": "Hi", "max_tokens": 2, "n": 4}, **bolt)
    assert status == 200 and len(body["choices"]) == 4
