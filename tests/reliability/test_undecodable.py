"""Raw bytes that are no message at all, sent to every method of every service Loom serves
(the engine's, the router's and the worker's: their own API, health and reflection): each
answer is INVALID_ARGUMENT, the log gets one short warning line for the lot and no traceback,
and the server serves on. A method a server declares and does not implement is UNIMPLEMENTED,
with nothing logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from frontend.embedded import ServerHandle, serve_in_thread
from loompb import serving_pb2, worker_pb2
from modelfiles.tokenizer_files import tokenizer_files
from router.server import serve_router_in_thread
from scheduler.config import EngineConfig
from tests.conftest import STORIES_DIR
from tests.reliability.conftest import SERVING, health
from tests.server.conftest import NUM_KV_BLOCKS, make_engine
from worker.config import WorkerServerConfig
from worker.runner import ModelRunner
from worker.server import WorkerServer

NOT_A_MESSAGE = b"\xff\xff\xff"  # field 31 of wire type 7, which does not exist
BAD_UTF8_PROMPT = b"\x12\x02\xc3\x28"  # GenerateRequest.prompt (a string) as invalid UTF-8
COMMON = (health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)


def methods(*files: FileDescriptor) -> list[tuple[str, bool, bool]]:
    """(path, client streams, server streams) of every method the files' services declare."""
    return [
        (f"/{service.full_name}/{method.name}", method.client_streaming, method.server_streaming)
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    ]


def send_raw(channel: grpc.Channel, path: str, streams_in: bool, streams_out: bool, raw: bytes):
    """Send `raw` as the request (identity serializers: the bytes go as they are)."""
    if streams_in and streams_out:
        list(channel.stream_stream(path)(iter([raw]), timeout=10))
    elif streams_in:
        channel.stream_unary(path)(iter([raw]), timeout=10)
    elif streams_out:
        list(channel.unary_stream(path)(raw, timeout=10))
    else:
        channel.unary_unary(path)(raw, timeout=10)


def assert_every_method_refuses_garbage(
    target: str, files: tuple[FileDescriptor, ...], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    paths = methods(*files, *COMMON)
    with grpc.insecure_channel(target) as channel:
        for path, streams_in, streams_out in paths:
            generate = path.startswith("/loom.v1.Generation/Generate")
            for raw in (NOT_A_MESSAGE, BAD_UTF8_PROMPT) if generate else (NOT_A_MESSAGE,):
                with pytest.raises(grpc.RpcError) as err:
                    send_raw(channel, path, streams_in, streams_out, raw)
                code, details = err.value.code(), err.value.details() or ""
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, raw, code, details)
                assert "does not decode" in details, details
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # Every refusal above came within one throttling interval: one line says it all.
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    [line] = [r.getMessage() for r in warnings]
    assert "undecodable request to /" in line and "\n" not in line and len(line) < 400
    assert len(paths) >= 5
    caplog.clear()
    # Health's List, which none of Loom's servers implements.
    with grpc.insecure_channel(target) as channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/grpc.health.v1.Health/List")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "/grpc.health.v1.Health/List is not implemented by this server"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.fixture(scope="module")
def engine_server() -> Iterator[ServerHandle]:
    handle = serve_in_thread(make_engine(device="cpu"))
    yield handle
    handle.stop(grace=0)


def test_the_engine_refuses_garbage_on_every_method(
    engine_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    assert_every_method_refuses_garbage(engine_server.target, (serving_pb2.DESCRIPTOR,), caplog)
    assert health(engine_server.target) == SERVING


def test_the_router_refuses_garbage_on_every_method(
    engine_server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    router = serve_router_in_thread(backend=(engine_server.target,))
    try:
        assert_every_method_refuses_garbage(router.target, (serving_pb2.DESCRIPTOR,), caplog)
        assert health(router.target) == SERVING
    finally:
        router.stop(grace=0)


def test_the_worker_refuses_garbage_on_every_method(caplog: pytest.LogCaptureFixture) -> None:
    config = EngineConfig.from_kwargs(
        model=str(STORIES_DIR), device="cpu", num_kv_blocks=NUM_KV_BLOCKS
    )
    server = WorkerServer(
        ModelRunner(config.worker), WorkerServerConfig(port=0), tokenizer_files(STORIES_DIR)
    )
    port = server.start()
    try:
        target = f"127.0.0.1:{port}"
        assert_every_method_refuses_garbage(target, (worker_pb2.DESCRIPTOR,), caplog)
        assert health(target) == SERVING
    finally:
        server.stop(grace=0)
