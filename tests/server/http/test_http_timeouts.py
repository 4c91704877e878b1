"""The HTTP server does not hold a connection for a client that takes too long: one that sends
its headers a byte at a time, or nothing at all, is closed at --http-header-timeout; one idle
between requests at --http-keep-alive-timeout. Other clients are served meanwhile."""

from __future__ import annotations

import socket
import time

import pytest

from frontend.config import FrontendConfig
from tests.server.http.conftest import openai_client

HEAD = b"POST /v1/completions HTTP/1.1\r\nhost: loom\r\ncontent-type: application/json\r\n"
GIVE_UP_S = 30.0  # far past every timeout below: a server that never closes fails the test


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    """Whether the server closed the connection within `wait_s` (reads nothing but EOF)."""
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_head_sent_a_byte_at_a_time_is_cut_off(start_server) -> None:
    server = start_server(http_port=0, http_header_timeout=1.5)
    client = openai_client(server)
    with socket.create_connection(("127.0.0.1", server.http_port)) as slow:
        sent = 0
        deadline = time.monotonic() + GIVE_UP_S
        while time.monotonic() < deadline:
            slow.sendall(HEAD[sent : sent + 1])
            sent += 1
            if closed_by_server(slow, 0.5):  # one byte every half second
                break
            if sent == 3:  # meanwhile, another client is served at once
                reply = client.completions.create(model="stories260K", prompt="Hi", max_tokens=2)
                assert reply.usage.completion_tokens == 2
        else:
            raise AssertionError(f"the server held a slow head for {GIVE_UP_S} s")
    assert sent < len(HEAD)  # cut off mid-head, well before it was complete


def test_a_connection_that_sends_nothing_is_closed(start_server) -> None:
    server = start_server(http_port=0, http_header_timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.http_port)) as silent:
        assert closed_by_server(silent, GIVE_UP_S)


def test_an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not(start_server) -> None:
    server = start_server(http_port=0, http_keep_alive_timeout=1.0, http_header_timeout=60.0)
    with socket.create_connection(("127.0.0.1", server.http_port)) as kept:
        for _ in range(3):  # back to back on one connection: kept alive between them
            kept.sendall(b"GET /health HTTP/1.1\r\nhost: loom\r\n\r\n")
            kept.settimeout(10)
            reply = b""
            while not reply.endswith(b'{"status":"ok"}'):
                reply += kept.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200")
        assert closed_by_server(kept, GIVE_UP_S)  # then idle: closed at the keep-alive


def test_timeouts_must_be_positive() -> None:
    for name in ("http_header_timeout", "http_keep_alive_timeout"):
        with pytest.raises(ValueError, match=f"{name} must be > 0"):
            FrontendConfig(**{name: 0})
