"""Every error status of the HTTP API from a real bad request, in OpenAI's JSON shape, as the
OpenAI client raises it; the same keys, tenants and quotas as gRPC; nothing left queued."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from frontend.embedded import ServerHandle
from serving.tenants import hash_key
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.http.conftest import held_engine, openai_client

MODEL = "stories260K"
TENANTS = f"""\
[tenants.acme]
api_key_sha256 = ["{hash_key("key-acme")}"]
max_tokens_per_request = 60
max_concurrent_requests = 1

[tenants.bolt]
api_key_sha256 = ["{hash_key("key-bolt")}"]
max_tokens_per_minute = 20
"""


@pytest.fixture
def tenants_server(start_server, tmp_path) -> ServerHandle:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    return start_server(tenants=str(path), http_port=0, max_request_bytes=4096)


def post(server: ServerHandle, path: str, body: bytes, headers: dict) -> tuple[int, dict, dict]:
    request = urllib.request.Request(f"{server.base_url}{path}", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def error_of(caught: pytest.ExceptionInfo) -> dict:
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_bad_fields_are_400_naming_the_field(tenants_server) -> None:
    client = openai_client(tenants_server, "key-bolt")
    cases = [
        ({"temperature": -1}, "temperature", "temperature must be >= 0"),
        ({"logprobs": 21}, "logprobs", "logprobs must be in [0, 20]"),
        ({"n": 17}, "n", "n must be in [1, 16], got 17"),
        ({"logit_bias": {"7": 300}}, "logit_bias", "logit_bias must be in [-100, 100]"),
        ({"presence_penalty": 3}, "presence_penalty", "presence_penalty must be in [-2, 2]"),
        ({"extra_body": {"min_p": 2}}, "min_p", "min_p must be in [0, 1], got 2"),
        ({"max_tokens": 600}, None, "must be <= the maximum model length (512)"),
        ({"extra_body": {"suffix": "!"}}, "suffix", "suffix is not supported"),
        ({"extra_body": {"top_k": "many"}}, "top_k", "top_k: Input should be a valid integer"),
    ]
    for fields, param, message in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model=MODEL, prompt="Hi", **fields)
        error = error_of(caught)
        assert error["type"] == "invalid_request_error" and error["param"] == param, fields
        assert message in error["message"], (fields, error)
    headers = {"authorization": "Bearer key-bolt", "content-type": "application/json"}
    status, _, body = post(tenants_server, "/completions", b"{not json", headers)
    assert status == 400 and "not JSON" in body["error"]["message"]
    wait_until(lambda: engine_is_idle(tenants_server.engine), 5.0, "the engine idle")


def test_keys_are_those_of_the_grpc_api(tenants_server) -> None:
    body = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 2}).encode()
    status, _, missing = post(tenants_server, "/completions", body, {})
    assert status == 401 and missing["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(tenants_server, "key-wrong").models.list()
    assert caught.value.status_code == 401 and "unknown API key" in error_of(caught)["message"]
    other = openai_client(tenants_server, "key-bolt", default_headers={"x-loom-tenant": "acme"})
    with pytest.raises(openai.PermissionDeniedError) as caught:
        other.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert caught.value.status_code == 403 and error_of(caught)["type"] == "permission_error"
    assert [m.id for m in openai_client(tenants_server, "key-bolt").models.list()] == [MODEL]


def test_unknown_model_and_route_are_404(tenants_server) -> None:
    client = openai_client(tenants_server, "key-bolt")
    with pytest.raises(openai.NotFoundError) as caught:
        client.completions.create(model="gpt-4", prompt="Hi")
    error = error_of(caught)
    assert error["param"] == "model" and error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.get("/nothing", cast_to=object)


def test_an_oversized_body_is_413(tenants_server) -> None:
    client = openai_client(tenants_server, "key-bolt")
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model=MODEL, prompt="x" * 5000, max_tokens=2)
    assert caught.value.status_code == 413 and error_of(caught)["code"] == "request_too_large"
    assert "4096 bytes" in error_of(caught)["message"]


def test_quotas_are_429_naming_the_limit(tenants_server) -> None:
    acme = openai_client(tenants_server, "key-acme")
    with pytest.raises(openai.RateLimitError) as caught:
        acme.completions.create(model=MODEL, prompt="Hi", max_tokens=30, n=2)
    error = error_of(caught)
    assert error["code"] == "max_tokens_per_request" and "x 2 sequences" in error["message"]
    stream = acme.completions.create(
        model=MODEL, prompt="Hi", max_tokens=50, stream=True, extra_body={"ignore_eos": True}
    )
    next(iter(stream))  # admitted and running: acme's one concurrent request
    with pytest.raises(openai.RateLimitError) as caught:
        acme.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert error_of(caught)["code"] == "max_concurrent_requests"
    stream.close()
    # The token rate: the first request runs the bucket into debt; waiting helps the next.
    bolt = openai_client(tenants_server, "key-bolt")
    bolt.completions.create(
        model=MODEL, prompt="Hi", max_tokens=19, extra_body={"ignore_eos": True}
    )
    with pytest.raises(openai.RateLimitError) as caught:
        bolt.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert error_of(caught)["code"] == "max_tokens_per_minute"
    headers = caught.value.response.headers
    assert int(headers["retry-after-ms"]) > 0 and int(headers["retry-after"]) >= 1
    wait_until(lambda: engine_is_idle(tenants_server.engine), 5, "every block free")


def test_a_full_queue_is_429(start_server) -> None:
    engine = held_engine(max_queued_requests=1)
    server = start_server(engine, http_port=0)
    client = openai_client(server)
    queued = client.completions.create(model=MODEL, prompt="Once", max_tokens=4, stream=True)
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model=MODEL, prompt="Twice", max_tokens=2)
    assert error_of(caught)["message"] == "the waiting queue is full (1 requests)"
    with pytest.raises(openai.RateLimitError):  # its 3 sequences would not fit either
        client.completions.create(model=MODEL, prompt="Thrice", max_tokens=2, n=3)
    engine.running.set()
    assert "".join(chunk.choices[0].text for chunk in queued)
    wait_until(lambda: engine_is_idle(engine), 5, "every block free")


def test_a_request_past_its_deadline_is_504_and_the_openai_client_does_not_retry_it(
    start_server,
) -> None:
    from tests.server.conftest import make_engine
    from tests.server.test_metrics_and_auth import scrape, value

    server = start_server(make_engine(queue_policy="deadline"), http_port=0, metrics_port=0)
    # With retries, as users run it: a plain 504 would be sent three times.
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=2)
    client.completions.create(model=MODEL, prompt="Once", max_tokens=8)  # step time measured
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(
            model=MODEL,
            prompt="Once",
            max_tokens=480,
            extra_body={"deadline_ms": 50, "ignore_eos": True},
        )
    assert caught.value.status_code == 504
    assert caught.value.response.headers["x-should-retry"] == "false"
    error = error_of(caught)
    assert (error["type"], error["code"]) == ("timeout_error", "deadline_exceeded")
    assert "cannot finish by its deadline" in error["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Once", extra_body={"deadline_ms": 0})
    assert error_of(caught)["param"] == "deadline_ms"
    wait_until(lambda: engine_is_idle(server.engine), 5, "every block free")
    samples = scrape(server.metrics_port)
    assert value(samples, "loom:request_deadlines_total", tenant="default", outcome="missed") == 1


def test_a_lone_surrogate_escape_and_a_wrong_stream_options_are_named(tenants_server) -> None:
    headers = {"authorization": "Bearer key-bolt", "content-type": "application/json"}
    for body, position in (
        (b'{"prompt": "\\ud800", "max_tokens": 2}', "line 1 column 13"),
        (b'{"prompt": "ok \\\\ud800 \\udc00", "max_tokens": 2}', "line 1 column 24"),
    ):
        status, _, reply = post(tenants_server, "/completions", body, headers)
        message = reply["error"]["message"]
        assert status == 400 and f"at {position}" in message, message
        assert "half of a UTF-16 surrogate pair" in message
    for value in ('"yes"', "1", "[]"):
        body = f'{{"prompt": "Hi", "stream": true, "stream_options": {value}}}'.encode()
        status, _, reply = post(tenants_server, "/completions", body, headers)
        assert status == 400 and reply["error"]["param"] == "stream_options"
        assert reply["error"]["message"] == "stream_options: Input should be an object"
    wait_until(lambda: engine_is_idle(tenants_server.engine), 5.0, "the engine idle")
