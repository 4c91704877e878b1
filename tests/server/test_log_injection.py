"""Nothing a caller sends can forge or restyle a log line: request ids are visible ASCII only
(INVALID_ARGUMENT otherwise, at the engine and at the router, in Generate and Abort), and the
caller-chosen text that does reach a log line (a scheduler's id at the worker) is escaped."""

from __future__ import annotations

import logging
import string
from collections.abc import Callable

import grpc
import pytest

from client import Client
from frontend.embedded import ServerHandle
from loompb import worker_pb2, worker_pb2_grpc
from modelfiles.tokenizer_files import tokenizer_files
from router.server import serve_router_in_thread
from scheduler.config import EngineConfig
from tests.conftest import STORIES_DIR
from tests.server.conftest import NUM_KV_BLOCKS
from worker.config import WorkerServerConfig
from worker.runner import ModelRunner
from worker.server import WorkerServer

FORGED_LINE = "x\n2026-01-01 12:00:00 INFO loom.requests request admin/y finish=stop"
HOSTILE_IDS = [
    FORGED_LINE,
    "\x1b[2J\x1b[31mred",  # ANSI: clear the screen, then red
    "invoice\u202efdp.exe",  # right-to-left override
    "tab\there",
    "with space",
    "caf\u00e9",
    "x" * 129,
]
VISIBLE_ASCII = "".join(c for c in string.printable if "!" <= c <= "~")  # all 94 of them


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def assert_ids_are_checked(target: str, caplog: pytest.LogCaptureFixture) -> None:
    with Client(target) as client:
        for bad in HOSTILE_IDS:
            for call in (
                lambda bad=bad: client.generate("Hi", max_tokens=1, request_id=bad),
                lambda bad=bad: list(client.generate_stream("Hi", max_tokens=1, request_id=bad)),
                lambda bad=bad: client.abort([bad]),
            ):
                err = refused(call)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (bad, err.details())
                assert "request_id" in err.details(), err.details()
        reply = client.generate("Hi", max_tokens=1, request_id=VISIBLE_ASCII[:128])
        assert reply.request_id == VISIBLE_ASCII[:128]
    lines = log_lines(caplog)
    assert any(VISIBLE_ASCII[:40] in line for line in lines), lines  # its line was written
    for line in lines:
        assert "\n" not in line and "\x1b" not in line and "\u202e" not in line, line


def test_the_engine_refuses_ids_that_could_forge_a_log_line(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    assert_ids_are_checked(server.target, caplog)
    err = refused(lambda: Client(server.target).abort([""]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_the_router_refuses_them_before_any_backend_sees_them(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    router = serve_router_in_thread(backend=(server.target,))
    caplog.set_level(logging.INFO)
    try:
        assert_ids_are_checked(router.target, caplog)
    finally:
        router.stop(grace=0)
    assert set(server.engine.stats().tenants) == {"default"}  # only the good id reached it


def test_a_scheduler_id_reaches_the_worker_log_escaped(caplog: pytest.LogCaptureFixture) -> None:
    config = EngineConfig.from_kwargs(
        model=str(STORIES_DIR), device="cpu", num_kv_blocks=NUM_KV_BLOCKS
    )
    server = WorkerServer(
        ModelRunner(config.worker), WorkerServerConfig(port=0), tokenizer_files(STORIES_DIR)
    )
    port = server.start()
    caplog.set_level(logging.INFO)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            stub.Connect(worker_pb2.ConnectRequest(scheduler_id=FORGED_LINE), timeout=10)
    finally:
        server.stop(grace=0)
    [connected] = [line for line in log_lines(caplog) if "connected" in line]
    assert "x\\n2026-01-01 12:00:00 INFO" in connected and "\n" not in connected
