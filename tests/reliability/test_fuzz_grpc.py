"""Property: whatever GenerateRequest a caller sends (any field, any value), Generate and
GenerateStream answer OK or refuse it as the caller's fault (INVALID_ARGUMENT, or
RESOURCE_EXHAUSTED for what is too big), never UNKNOWN or INTERNAL; the server is idle after.
The same for raw bytes on the wire (no message, or a valid one damaged) to every method, with
no traceback in the log."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frontend.embedded import ServerHandle, serve_in_thread
from loompb import serving_pb2, serving_pb2_grpc
from tests.reliability.conftest import SERVING, assert_idle, health
from tests.reliability.fuzz import FUZZ, generate_requests, wire_bytes
from tests.server.conftest import make_engine

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = serve_in_thread(make_engine(device="cpu"))
    yield handle
    handle.stop(grace=0)


def answer(
    stub: serving_pb2_grpc.GenerationStub, request: serving_pb2.GenerateRequest, streamed: bool
) -> tuple[grpc.StatusCode, str]:
    try:
        if streamed:
            messages = list(stub.GenerateStream(request, timeout=60))
            assert messages[-1].finish_reason != serving_pb2.FINISH_REASON_UNSPECIFIED
        else:
            reply = stub.Generate(request, timeout=60)
            assert reply.finish_reason != serving_pb2.FINISH_REASON_UNSPECIFIED
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_any_generate_request_is_served_or_refused_as_the_callers_fault(
    server: ServerHandle,
) -> None:
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)

        @FUZZ
        @given(request=generate_requests(), streamed=st.booleans())
        def one(request: serving_pb2.GenerateRequest, streamed: bool) -> None:
            code, details = answer(stub, request, streamed)
            seen[code.name] += 1
            assert code in ALLOWED, f"{code.name}: {details}"

        one()
    # The examples reach every answer, not only the refusals.
    assert set(seen) == {code.name for code in ALLOWED}, seen
    assert_idle(server)
    assert health(server.target) == SERVING


# Each method of the engine's server, whether it streams, and what else it may answer.
RAW_METHODS = {
    "/loom.v1.Generation/Generate": (False, set()),
    "/loom.v1.Generation/GenerateStream": (True, set()),
    "/loom.v1.Generation/Tokenize": (False, set()),
    "/loom.v1.Generation/Detokenize": (False, set()),
    "/loom.v1.Generation/Abort": (False, set()),
    "/loom.v1.Generation/GetModelInfo": (False, set()),
    "/loom.v1.Generation/GetLoad": (False, set()),
    # The model has no chat template; a service name no one serves.
    "/loom.v1.Generation/ApplyChatTemplate": (False, {grpc.StatusCode.FAILED_PRECONDITION}),
    "/grpc.health.v1.Health/Check": (False, {grpc.StatusCode.NOT_FOUND}),
}


def raw_answer(channel: grpc.Channel, method: str, raw: bytes) -> tuple[grpc.StatusCode, str]:
    streams, _ = RAW_METHODS[method]
    try:
        if streams:
            list(channel.unary_stream(method)(raw, timeout=60))
        else:
            channel.unary_unary(method)(raw, timeout=60)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_any_bytes_on_the_wire_are_served_or_refused_without_a_traceback(
    server: ServerHandle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    seen: Counter[str] = Counter()
    with grpc.insecure_channel(server.target) as channel:

        @settings(FUZZ, max_examples=150)
        @given(raw=wire_bytes(), method=st.sampled_from(sorted(RAW_METHODS)))
        def one(raw: bytes, method: str) -> None:
            code, details = raw_answer(channel, method, raw)
            seen[code.name] += 1
            assert code in ALLOWED | RAW_METHODS[method][1], f"{method}: {code.name}: {details}"

        one()
    assert {"OK", "INVALID_ARGUMENT"} <= set(seen), seen
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert_idle(server)
    assert health(server.target) == SERVING
