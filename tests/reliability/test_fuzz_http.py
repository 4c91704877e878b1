"""Property: whatever body a caller posts to the OpenAI routes (any JSON, any field, not JSON,
too big), the answer is 200 or the caller's fault (400, 413, 429; 404 only for another
model's name), never a 500 nor a server_error event in a stream; the server is idle after."""

from __future__ import annotations

import http.client
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from frontend.embedded import ServerHandle, serve_in_thread
from tests.reliability.conftest import SERVING, assert_idle, health
from tests.reliability.fuzz import FUZZ, http_bodies
from tests.server.conftest import make_engine

ROUTES = ("/v1/completions", "/v1/chat/completions", "/tokenize")
MODEL = "stories260K"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = serve_in_thread(make_engine(device="cpu"), http_port=0, max_request_bytes=1 << 16)
    yield handle
    handle.stop(grace=0)


def post(port: int, route: str, body: bytes) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", route, body, {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def allowed(status: int, value: Any) -> set[int]:
    codes = {200, 400, 413, 429}
    if isinstance(value, dict) and isinstance(value.get("model"), str) and value["model"] != MODEL:
        codes.add(404)  # another model than the one served
    return codes


def test_any_body_is_served_or_refused_as_the_callers_fault(server: ServerHandle) -> None:
    seen: Counter[int] = Counter()

    @FUZZ
    @given(sent=http_bodies(), route=st.sampled_from(ROUTES))
    def one(sent: tuple[bytes, Any], route: str) -> None:
        body, value = sent
        status, text = post(server.http_port, route, body)
        seen[status] += 1
        assert status in allowed(status, value), f"{status}: {text[:500]}"
        assert "server_error" not in text, text[:500]
        if status == 200 and text.startswith("data:"):
            assert text.rstrip().endswith("data: [DONE]"), text[-200:]
        elif status != 200:
            assert set(json.loads(text)["error"]) == {"message", "type", "param", "code"}

    one()
    assert {200, 400, 413} <= set(seen), seen
    assert_idle(server)
    assert health(server.target) == SERVING
