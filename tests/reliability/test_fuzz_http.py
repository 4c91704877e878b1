"""Property: whatever body a caller posts to the OpenAI routes (any JSON, any field, not JSON,
too big, thousands of prompts), the answer is 200 or the caller's fault (400, 413, 429; 404
only for another model's name), never a 500 nor a server_error event in a stream; a call of
more sequences than --max-prompts-per-request is refused naming it; any bytes on the wire
get a 4xx or a closed connection, with one warning line for the lot; the server is idle
after."""

from __future__ import annotations

import http.client
import json
import logging
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.config import DEFAULT_MAX_PROMPTS_PER_REQUEST
from frontend.embedded import ServerHandle, serve_in_thread
from tests.reliability.conftest import SERVING, assert_idle, health
from tests.reliability.fuzz import FUZZ, http_bodies, many_prompt_bodies
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


def test_bodies_of_many_prompts_are_bounded_as_a_whole(server: ServerHandle) -> None:
    seen: Counter[int] = Counter()

    @settings(FUZZ, max_examples=40)
    @given(sent=many_prompt_bodies())
    def one(sent: tuple[bytes, dict]) -> None:
        body, value = sent
        status, text = post(server.http_port, "/v1/completions", body)
        seen[status] += 1
        assert status in {200, 400, 413}, f"{status}: {text[:500]}"
        assert "server_error" not in text, text[:500]
        num_prompts, n = len(value["prompt"]), value["n"]
        if status == 400 and num_prompts > 1:
            error = json.loads(text)["error"]
            over = num_prompts * n > DEFAULT_MAX_PROMPTS_PER_REQUEST
            assert (error["code"] == "max_prompts_per_request") == over, error
        if status == 200 and not value["stream"]:
            assert len(json.loads(text)["choices"]) == num_prompts * n

    one()
    assert {200, 400, 413} <= set(seen), seen
    assert_idle(server)


# Request heads as they begin, some of them well formed, before the random bytes.
HEAD_STARTS = st.sampled_from(
    [b"", b"GET / HTTP/1.1\r\n", b"POST /v1/completions HTTP/1.1\r\nhost: x\r\n", b"\x16\x03\x01"]
)


def raw_exchange(port: int, raw: bytes) -> bytes:
    """Send `raw` and the blank line that ends a head; what comes back before the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except ConnectionResetError:
            pass
    return reply


def test_any_bytes_on_the_wire_get_a_4xx_or_a_close(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen: Counter[str] = Counter()

    @settings(FUZZ, max_examples=60)
    @given(start=HEAD_STARTS, raw=st.binary(max_size=128))
    def one(start: bytes, raw: bytes) -> None:
        reply = raw_exchange(server.http_port, start + raw)
        status = reply.split(b" ", 2)[1].decode() if reply.startswith(b"HTTP/1.1 ") else "none"
        seen[status] += 1
        assert status == "none" or int(status) < 500, reply[:300]

    one()
    assert "400" in seen, seen
    warnings = [r for r in caplog.records if r.name == "uvicorn.error"]
    assert len(warnings) <= 2, [r.getMessage() for r in warnings]  # throttled: 1 per 10 s
    assert not [r for r in caplog.records if r.exc_info]
    assert_idle(server)
    assert health(server.target) == SERVING
