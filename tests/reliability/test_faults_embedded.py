"""Faults of the embedded worker: a step that raises fails the requests it ran (INTERNAL) and
no others; non-finite logits fail only the rows they hit; faults that persist stop the engine
after max_step_failures steps in a row, and it says so; a fault that stops in time costs only
the requests it touched. After each: no block held, health as the state is."""

from __future__ import annotations

import math

import grpc
import pytest

from client import Client
from loompb import serving_pb2_grpc
from tests.reliability.conftest import (
    NOT_SERVING,
    PROMPTS,
    SERVING,
    assert_idle,
    clean_tokens,
    code_of,
    faulty_engine,
    greedy,
    health,
    open_stream,
    tokens_of,
)
from tests.server.conftest import wait_until


def test_a_failed_step_fails_the_requests_it_ran_and_no_others(start_server) -> None:
    engine, worker = faulty_engine(max_num_seqs=2)  # two run, the others wait
    server = start_server(engine, max_step_failures=3)
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        running = [open_stream(stub, prompt, 400) for prompt in PROMPTS[:2]]
        for call in running:
            next(call)  # both are generating: the two seats are taken
        waiting = [open_stream(stub, prompt, 24) for prompt in PROMPTS[2:4]]
        wait_until(lambda: engine.stats().num_waiting == 2, 5.0, "two requests waiting")
        worker.fail_next(1)
        for call in running:
            with pytest.raises(grpc.RpcError) as failed:
                tokens_of(call)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "injected worker fault" in failed.value.details()
        for call, prompt in zip(waiting, PROMPTS[2:4], strict=True):
            assert tokens_of(call) == clean_tokens(prompt, 24)
    assert_idle(server)
    assert health(server.target) == SERVING
    with Client(server.target) as client:  # and it serves on
        assert greedy(client, PROMPTS[4], 16) == clean_tokens(PROMPTS[4], 16)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_logits_fail_only_the_rows_they_hit(start_server, value: float) -> None:
    engine, _ = faulty_engine(poison=value)
    server = start_server(engine, max_step_failures=1)  # a row's failure is no step failure
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        for _ in range(3):
            poisoned = open_stream(stub, PROMPTS[0], 40, request_id="poison-1")
            others = [open_stream(stub, prompt, 40) for prompt in PROMPTS[1:4]]
            with pytest.raises(grpc.RpcError) as failed:
                tokens_of(poisoned)
            assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert "not finite (NaN or inf)" in failed.value.details()
            for call, prompt in zip(others, PROMPTS[1:4], strict=True):
                assert tokens_of(call) == clean_tokens(prompt, 40)
            assert_idle(server)
    assert server.frontend.async_engine.alive
    assert health(server.target) == SERVING


def test_a_fault_that_persists_stops_the_engine_and_says_so(start_server) -> None:
    engine, worker = faulty_engine()
    server = start_server(engine, max_step_failures=3)
    worker.fail_next(1_000)
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        for prompt in PROMPTS[:3]:  # one failed step each: the third is one too many
            assert code_of(open_stream(stub, prompt, 8)) == grpc.StatusCode.INTERNAL
        wait_until(lambda: not server.frontend.async_engine.alive, 5.0, "the loop stopped")
        with pytest.raises(grpc.RpcError) as refused:
            tokens_of(open_stream(stub, PROMPTS[3], 8))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "3 engine steps failed in a row" in refused.value.details()
    assert health(server.target) == NOT_SERVING
    assert worker.num_steps == 3
    reason = server.frontend.async_engine.stop_reason
    assert "3 engine steps failed in a row (max_step_failures 3)" in reason
    assert "injected worker fault" in reason
    assert engine.stats().num_free_blocks == engine.stats().num_blocks


def test_a_fault_that_stops_in_time_costs_only_the_requests_it_touched(start_server) -> None:
    engine, worker = faulty_engine()
    server = start_server(engine, max_step_failures=3)
    with Client(server.target) as client:
        for round_number in range(3):  # two failed steps, then one that runs: the count resets
            worker.fail_next(2)
            for prompt in PROMPTS[:2]:
                with pytest.raises(grpc.RpcError) as failed:
                    greedy(client, prompt, 8)
                assert failed.value.code() == grpc.StatusCode.INTERNAL
            assert greedy(client, PROMPTS[round_number], 12) == clean_tokens(
                PROMPTS[round_number], 12
            )
            assert_idle(server)
    assert worker.num_steps >= 6 + 3
    assert server.frontend.async_engine.alive
    assert health(server.target) == SERVING
