"""A flood beyond --max-queued-requests and beyond a tenant's quota is shed with
RESOURCE_EXHAUSTED before any work, while what was admitted runs to the same tokens as a clean
run. The engine is held inside a step while the flood comes, so the queue is surely full."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc

from client import build_request
from loompb import serving_pb2_grpc
from serving.tenants import hash_key
from tests.reliability.conftest import (
    PROMPTS,
    assert_idle,
    clean_tokens,
    faulty_engine,
    open_stream,
    tokens_of,
)
from tests.server.conftest import wait_until

FLOOD = 40


def flood(stub: serving_pb2_grpc.GenerationStub, metadata: tuple = ()) -> list[grpc.RpcError]:
    """FLOOD calls at once; the errors they end with (a call that got in returns None)."""

    def one(i: int) -> grpc.RpcError | None:
        request = build_request(f"Flood {i}", max_tokens=8)
        try:
            stub.Generate(request, timeout=30, metadata=metadata or None)
        except grpc.RpcError as exc:
            return exc
        return None

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(FLOOD)))


def test_a_flood_past_the_queue_cap_is_shed_and_the_admitted_run_clean(start_server) -> None:
    engine, worker = faulty_engine(max_num_seqs=2, max_queued_requests=4)
    server = start_server(engine)
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        admitted = [open_stream(stub, prompt, 60) for prompt in PROMPTS[:2]]
        for call in admitted:
            next(call)
        worker.stall_next()  # the engine holds still: nothing leaves the queue
        wait_until(worker.stalled.is_set, 5.0, "a step held")
        admitted += [open_stream(stub, prompt, 60) for prompt in PROMPTS[2:6]]
        wait_until(lambda: engine.stats().num_waiting == 4, 5.0, "the queue full")
        errors = flood(stub)
        worker.release()
        assert [e.code() for e in errors] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * FLOOD
        assert all("the waiting queue is full (4 requests)" in e.details() for e in errors)
        tokens = [tokens_of(call) for call in admitted]
    for got, prompt in zip(tokens[:2], PROMPTS[:2], strict=True):
        assert got == clean_tokens(prompt, 60)[1:]  # the first token was read above
    for got, prompt in zip(tokens[2:], PROMPTS[2:6], strict=True):
        assert got == clean_tokens(prompt, 60)
    assert_idle(server)


TENANTS = f"""\
[tenants.flood]
api_key_sha256 = ["{hash_key("key-flood")}"]
max_concurrent_requests = 2

[tenants.calm]
api_key_sha256 = ["{hash_key("key-calm")}"]
"""


def test_a_tenant_flooding_past_its_quota_is_shed_and_others_are_served(
    start_server, tmp_path
) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    engine, worker = faulty_engine()
    server = start_server(engine, tenants=str(path))
    as_flood = (("authorization", "Bearer key-flood"),)
    as_calm = (("authorization", "Bearer key-calm"),)
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)

        def stream(prompt: str, metadata: tuple) -> grpc.Call:
            request = build_request(prompt, max_tokens=40, temperature=0, ignore_eos=True)
            return stub.GenerateStream(request, metadata=metadata)

        flooder = [stream(prompt, as_flood) for prompt in PROMPTS[:2]]
        wait_until(lambda: engine.stats().num_running == 2, 5.0, "the tenant's two running")
        worker.stall_next()
        wait_until(worker.stalled.is_set, 5.0, "a step held")
        errors = flood(stub, as_flood)
        calm = [stream(prompt, as_calm) for prompt in PROMPTS[2:4]]
        wait_until(lambda: engine.stats().num_waiting == 2, 5.0, "the calm tenant queued")
        worker.release()
        assert [e.code() for e in errors] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * FLOOD
        assert all("max_concurrent_requests" in e.details() for e in errors)
        for call, prompt in zip(flooder + calm, PROMPTS[:4], strict=True):
            assert tokens_of(call) == clean_tokens(prompt, 40)
    assert_idle(server)
