"""Property: whatever GenerateRequest a caller sends (any field, any value), Generate and
GenerateStream answer OK or refuse it as the caller's fault (INVALID_ARGUMENT, or
RESOURCE_EXHAUSTED for what is too big), never UNKNOWN or INTERNAL; the server is idle after."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from frontend.embedded import ServerHandle, serve_in_thread
from loompb import serving_pb2, serving_pb2_grpc
from tests.reliability.conftest import SERVING, assert_idle, health
from tests.reliability.fuzz import FUZZ, generate_requests
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
