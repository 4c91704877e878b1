"""Health, reflection, and draining: in-process and on SIGTERM to a real `serve` process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from client import Client
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from tests.conftest import REPO_ROOT
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.serve_process import ServeProcess

SERVE = [sys.executable, "-m", "frontend", "serve"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service=service)
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def test_health_serving_and_reflection(server: ServerHandle) -> None:
    assert health_status(server.target) == SERVING
    assert health_status(server.target, "loom.v1.Generation") == SERVING
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        [reply] = list(stub.ServerReflectionInfo(iter([request])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"loom.v1.Generation", "grpc.health.v1.Health"} <= names


def test_drain_lets_streams_finish_and_refuses_new_calls(server: ServerHandle) -> None:
    with Client(server.target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=120, ignore_eos=True)
        deltas = [next(stream)]
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 30.0})
        stopper.start()
        wait_until(lambda: health_status(server.target) == NOT_SERVING, 5.0, "NOT_SERVING")
        with pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        deltas.extend(stream)  # the stream in flight still runs to its end
        stopper.join(10)
        assert not stopper.is_alive()
    assert sum(len(d.token_ids) for d in deltas) == 120
    assert deltas[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "the engine idle")


def test_drain_aborts_what_outlives_the_timeout(server: ServerHandle) -> None:
    with Client(server.target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=480, ignore_eos=True)
        next(stream)
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 0.1})
        stopper.start()
        with pytest.raises(grpc.RpcError) as err:
            list(stream)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shut down" in err.value.details()
        stopper.join(10)
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "the aborted request's blocks freed")


def test_sigterm_lets_streams_finish_and_exits_zero() -> None:
    serve = ServeProcess(
        SERVE + ["--port", "0", "--num-kv-blocks", "128", "--shutdown-timeout", "60"]
    )
    try:
        assert health_status(serve.target) == SERVING
        with Client(serve.target) as client:
            streams = [
                client.generate_stream(f"Story {i}", max_tokens=80, ignore_eos=True)
                for i in range(4)
            ]
            deltas = [[next(s)] for s in streams]  # all four are generating
            serve.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: health_status(serve.target) == NOT_SERVING, 5.0, "NOT_SERVING")
            for stream, got in zip(streams, deltas, strict=True):
                got.extend(stream)
        assert serve.proc.wait(timeout=30) == 0
    finally:
        serve.stop()
    for got in deltas:
        assert sum(len(d.token_ids) for d in got) == 80
        assert got[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
    log = serve.log()
    assert "KV cache: 128 blocks x 16 tokens = 2048 tokens" in log
    assert len(re.findall(r"request default/\S+ .*finish=length", log)) == 4


def run_serve_to_exit(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SERVE, *flags],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_serve_refuses_a_missing_model_dir(tmp_path: Path) -> None:
    result = run_serve_to_exit("--model", str(tmp_path / "none"))
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: no model at {tmp_path / 'none'}")
    assert result.stderr.count("\n") == 1  # one line, no traceback


def test_serve_refuses_a_taken_port(server: ServerHandle) -> None:
    result = run_serve_to_exit("--port", str(server.port), "--num-kv-blocks", "16")
    assert result.returncode == 2
    assert "cannot listen" in result.stderr
    assert health_status(server.target) == SERVING  # the first server is untouched
