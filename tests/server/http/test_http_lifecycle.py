"""The HTTP API's life beside gRPC: one event loop, /health and /metrics on its port, a client
that hangs up aborts its request, draining refuses new calls with 503 while streams finish,
and SIGTERM to a real `serve` process drains both APIs."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import sys
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import openai
import pytest

from frontend.embedded import ServerHandle
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.http.conftest import held_engine, openai_client
from tests.server.serve_process import ServeProcess

MODEL = "stories260K"
LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True}
HTTP_LINE = re.compile(r"OpenAI-compatible API on (http://\S+/v1)")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def num_aborted(server: ServerHandle) -> float:
    value = server.frontend.metrics.registry.get_sample_value(
        "loom:request_finished_total",
        {"model": MODEL, "tenant": "default", "finish_reason": "abort"},
    )
    return value or 0.0


def open_post(base_url: str, body: dict) -> tuple[http.client.HTTPConnection, socket.socket]:
    """A POST whose response is left unread; the socket, to hang up on it."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    payload = json.dumps(body).encode()
    connection.request(
        "POST", f"{parts.path}/completions", payload, {"content-type": "application/json"}
    )
    return connection, connection.sock


def test_one_loop_health_and_metrics_on_the_http_port(http_server) -> None:
    http_task = http_server.frontend._http._task
    assert http_task.get_loop() is http_server._loop  # the gRPC server's loop
    root = http_server.base_url.removesuffix("/v1")
    assert get(f"{root}/health") == (200, b'{"status":"ok"}')
    openai_client(http_server).completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    status, text = get(f"{root}/metrics")
    assert status == 200
    assert re.search(rb'loom:request_finished_total\{.*finish_reason="length".*\} 1\.0', text)


def test_hanging_up_on_a_stream_aborts_its_request(http_server) -> None:
    connection, sock = open_post(http_server.base_url, {**LONG, "stream": True})
    response = connection.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: ")
    sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    wait_until(lambda: num_aborted(http_server) == 1, 5.0, "the request aborted")
    wait_until(lambda: engine_is_idle(http_server.engine), 5.0, "every block free")
    assert http_server.frontend.gate.num_in_flight == 0  # released: a drain would not wait


def test_hanging_up_before_a_plain_response_aborts_its_request(start_server) -> None:
    engine = held_engine()  # the request stays queued until the test lets the engine run
    server = start_server(engine, http_port=0)
    gate = server.frontend.gate
    connection, sock = open_post(server.base_url, LONG)
    wait_until(lambda: gate.num_in_flight == 1, 5, "the plain request admitted")
    sock.shutdown(socket.SHUT_RDWR)
    connection.close()
    wait_until(lambda: gate.num_in_flight == 0, 5.0, "the hang-up seen, the request released")
    engine.running.set()
    wait_until(lambda: num_aborted(server) == 1, 5.0, "the request aborted")
    wait_until(lambda: engine_is_idle(engine), 5.0, "every block free")
    generated = server.frontend.metrics.registry.get_sample_value(
        "loom:generation_tokens_total", {"model": MODEL, "tenant": "default"}
    )
    assert not generated  # aborted before its first step


def test_draining_refuses_new_calls_with_503_and_lets_streams_finish(start_server) -> None:
    engine = held_engine()  # the stream stays in flight until the drain has been seen
    server = start_server(engine, http_port=0)
    client = openai_client(server)
    stream = client.completions.create(
        model=MODEL,
        prompt="Once",
        max_tokens=40,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
    stopper.start()
    wait_until(lambda: server.frontend.gate.draining, 5.0, "draining")
    root = server.base_url.removesuffix("/v1")
    status, body = get(f"{root}/health")
    assert status == 503 and json.loads(body)["error"]["type"] == "service_unavailable_error"
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    assert caught.value.status_code == 503 and "shutting down" in caught.value.body["message"]
    engine.running.set()
    chunks = list(stream)  # the stream in flight runs to its end
    stopper.join(10)
    assert not stopper.is_alive()
    assert chunks[-1].usage.completion_tokens == 40
    assert chunks[-2].choices[0].finish_reason == "length"
    wait_until(lambda: engine_is_idle(engine), 5.0, "the engine idle")


def test_sigterm_drains_both_apis_and_exits_zero() -> None:
    serve = ServeProcess(
        [sys.executable, "-m", "frontend", "serve", "--port", "0", "--http-port", "0"]
        + ["--num-kv-blocks", "128", "--shutdown-timeout", "60"]
    )
    try:
        [base_url] = [m.group(1) for line in serve.lines if (m := HTTP_LINE.search(line))]
        client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0)
        stream = client.completions.create(
            model=MODEL,
            prompt="Story",
            max_tokens=300,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        chunks = iter(stream)
        texts = [next(chunks).choices[0].text]
        serve.proc.send_signal(signal.SIGTERM)
        health = base_url.removesuffix("/v1") + "/health"
        wait_until(lambda: get(health)[0] == 503, 5.0, "/health answers 503")
        texts += [chunk.choices[0].text for chunk in chunks]
        assert serve.proc.wait(timeout=30) == 0
    finally:
        serve.stop()
    assert re.search(
        r"request default/\S+ .*finish=length prompt_tokens=\d+ completion_tokens=300", serve.log()
    )
    assert len("".join(texts)) > 0
