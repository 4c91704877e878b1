"""SIGTERM to a real `serve` process with streams in flight: they finish to their clean
tokens (none lost, none cut without a status), new calls are refused on both APIs (gRPC
UNAVAILABLE, HTTP 503), and it exits 0. A second signal aborts what is left: every stream
then ends either complete or with UNAVAILABLE, and the process still exits 0. A health Watch
stream sees NOT_SERVING and then ends, so it never holds the stop."""

from __future__ import annotations

import signal
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import Client
from loompb import serving_pb2
from tests.reliability.conftest import NOT_SERVING, PROMPTS, SERVING, clean_tokens, health
from tests.server.conftest import wait_until
from tests.server.serve_process import ServeProcess

SERVE = [sys.executable, "-m", "frontend", "serve", "--port", "0", "--num-kv-blocks", "256"]
LENGTH = serving_pb2.FINISH_REASON_LENGTH


def read_stream(stream: object) -> tuple[list[int], int, grpc.StatusCode]:
    """(tokens, the last finish reason, how it ended)."""
    tokens, finish = [], 0
    try:
        for delta in stream:
            tokens.extend(delta.token_ids)
            finish = delta.finish_reason or finish
    except grpc.RpcError as exc:
        return tokens, finish, exc.code()
    return tokens, finish, grpc.StatusCode.OK


def test_sigterm_drains_streams_in_flight_refuses_new_calls_and_exits_zero() -> None:
    serve = ServeProcess([*SERVE, "--shutdown-timeout", "60", "--http-port", "0"])
    http_port = next(
        int(line.rsplit(":", 1)[1].split("/")[0]) for line in serve.lines if "OpenAI" in line
    )
    try:
        with Client(serve.target) as client, ThreadPoolExecutor(6) as pool:
            streams = [
                client.generate_stream(p, max_tokens=300, temperature=0, ignore_eos=True)
                for p in PROMPTS
            ]
            firsts = [next(stream) for stream in streams]  # all six are generating
            serve.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: health(serve.target) == NOT_SERVING, 5.0, "NOT_SERVING")
            with pytest.raises(grpc.RpcError) as refused:
                client.generate("Hi", max_tokens=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            base = f"http://127.0.0.1:{http_port}"
            for request in (
                urllib.request.Request(f"{base}/health"),
                urllib.request.Request(
                    f"{base}/v1/completions",
                    data=b'{"prompt": "Hi", "max_tokens": 2}',
                    headers={"content-type": "application/json"},
                ),
            ):
                with pytest.raises(urllib.error.HTTPError) as http_refused:
                    urllib.request.urlopen(request, timeout=5)
                assert http_refused.value.code == 503
            ends = list(pool.map(read_stream, streams))
        assert serve.proc.wait(timeout=30) == 0
    finally:
        serve.stop()
    for first, (tokens, finish, code), prompt in zip(firsts, ends, PROMPTS, strict=True):
        assert (code, finish) == (grpc.StatusCode.OK, LENGTH)
        assert [*first.token_ids, *tokens] == clean_tokens(prompt, 300)


def test_a_second_signal_aborts_what_is_left_and_still_exits_zero() -> None:
    serve = ServeProcess([*SERVE, "--shutdown-timeout", "60", "--max-num-seqs", "4"])
    try:
        with Client(serve.target) as client, ThreadPoolExecutor(48) as pool:
            streams = [
                client.generate_stream(f"Story {i}", max_tokens=480, ignore_eos=True)
                for i in range(48)
            ]
            reading = [pool.submit(read_stream, stream) for stream in streams]

            def all_arrived() -> bool:  # a call that reaches a stopping server is CANCELLED
                load = client.load()
                queued = load.num_requests_running + load.num_requests_waiting
                return load.num_requests_running == 4 and queued + sum(
                    future.done() for future in reading
                ) == len(streams)

            wait_until(all_arrived, 10.0, "four running, the others waiting or done")
            serve.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: health(serve.target) == NOT_SERVING, 5.0, "NOT_SERVING")
            serve.proc.send_signal(signal.SIGTERM)
            ends = [future.result(timeout=30) for future in reading]
        assert serve.proc.wait(timeout=30) == 0
    finally:
        serve.stop()
    complete = [end for end in ends if end[2] == grpc.StatusCode.OK]
    cut = [end for end in ends if end[2] != grpc.StatusCode.OK]
    assert all(len(tokens) == 480 and finish == LENGTH for tokens, finish, _ in complete)
    assert {code for _, _, code in cut} == {grpc.StatusCode.UNAVAILABLE}
    assert len(cut) >= 40  # 44 were still waiting when the second signal came
    assert "aborting" in serve.log()


def test_a_health_watch_sees_not_serving_then_ends_so_it_does_not_hold_the_stop() -> None:
    serve = ServeProcess([*SERVE, "--shutdown-timeout", "60"])
    try:
        with grpc.insecure_channel(serve.target) as channel:
            request = health_pb2.HealthCheckRequest(service="")
            watch = health_pb2_grpc.HealthStub(channel).Watch(request, timeout=60)
            first = next(watch)
            serve.proc.send_signal(signal.SIGTERM)
            rest = [reply.status for reply in watch]  # ends OK: no RpcError, no CANCELLED
        assert (first.status, rest) == (SERVING, [NOT_SERVING])
        assert serve.proc.wait(timeout=30) == 0
    finally:
        serve.stop()
