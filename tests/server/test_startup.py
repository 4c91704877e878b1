"""What `serve` does before it answers: its ports are taken before the model loads, so a busy
one ends the start at once; each loading stage is logged with its time, then "ready"; and
`health --wait` blocks until the server is SERVING."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.conftest import REPO_ROOT
from tests.server.serve_process import ServeProcess

SERVE = [sys.executable, "-m", "frontend", "serve", "--num-kv-blocks", "64"]
HEALTH = [sys.executable, "-m", "frontend", "health"]


def run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@contextmanager
def held_port() -> Iterator[int]:
    """A port another process holds for the test's length (listening, as a server would)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(("flag", "what"), [("--port", "gRPC"), ("--http-port", "HTTP"),
                                            ("--metrics-port", "metrics")])  # fmt: skip
def test_a_busy_port_ends_the_start_before_the_model_loads(flag: str, what: str) -> None:
    with held_port() as port:
        others = [] if flag == "--port" else ["--port", "0"]
        result = run([*SERVE, *others, flag, str(port)])
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} ({what})" in result.stderr
    assert "reading the" not in result.stderr  # nothing of the model was read


def test_each_stage_is_logged_with_its_time_then_ready() -> None:
    server = ServeProcess([*SERVE, "--port", "0"])
    try:
        log = server.log()
        stages = ["reading the tokenizer: ", "importing torch: ", "reading the weights (",
                  "building the model: ", "allocating the KV cache (64 blocks): ",
                  "ready: listening on "]  # fmt: skip
        positions = [log.index(stage) for stage in stages]
        assert positions == sorted(positions)
    finally:
        server.stop()


def test_health_wait_blocks_until_the_server_serves() -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    nobody = run([*HEALTH, "--target", target, "--wait", "1", "--timeout", "0.5"])
    assert nobody.returncode == 1 and "UNAVAILABLE" in nobody.stdout
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    # The check starts first, while nothing listens, and must keep asking.
    health = subprocess.Popen(
        [*HEALTH, "--target", target, "--wait", "90"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    server = subprocess.Popen(
        [*SERVE, "--port", str(port)], cwd=REPO_ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        out, _ = health.communicate(timeout=120)
        assert health.returncode == 0 and out == f"{target}: SERVING\n"
        assert server.poll() is None
    finally:
        health.kill()
        server.kill()
        server.wait()
