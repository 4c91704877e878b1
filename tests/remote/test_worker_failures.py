"""`python -m frontend serve --worker` as a real process on a host without torch, in front of
a real `python -m worker serve`: it serves what the embedded server serves; a second scheduler
is refused; a worker that hangs or dies fails the requests in flight with UNAVAILABLE within
--worker-timeout and turns health NOT_SERVING; once the worker answers again (resumed, or
restarted on its port) health is SERVING and the output is right again, with no prefix cached
from before."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import Client
from frontend.embedded import ServerHandle, serve_in_thread
from loompb import worker_pb2, worker_pb2_grpc
from tests.conftest import REPO_ROOT
from tests.remote.conftest import SCHEDULER, start_worker
from tests.server.conftest import make_engine, wait_until
from tests.server.serve_process import ServeProcess

WORKER_TIMEOUT = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Prompts of two full blocks and more, a different one per test: a second run hits the
# prefix cache, a first run (nothing else begins with it) computes every token.
LONG_PROMPTS = {
    "hangs": "Tom had a red kite. He flew it in the wind every day after school. " * 2,
    "dies": "The old dog slept by the fire while the rain fell on the roof all night. " * 2,
}


@dataclass
class Cluster:
    worker: ServeProcess
    scheduler: ServeProcess | None


@pytest.fixture(scope="module")
def cluster(without_torch: dict[str, str]) -> Iterator[Cluster]:
    found = Cluster(start_worker("--session-timeout", "5"), None)
    try:
        found.scheduler = ServeProcess(
            [
                *SCHEDULER,
                "--worker", found.worker.target,
                "--worker-timeout", str(WORKER_TIMEOUT),
                "--metrics-port", "0",
            ],
            env=without_torch,
        )  # fmt: skip
        yield found
    finally:
        if found.scheduler is not None:
            found.scheduler.stop()
        found.worker.stop()


@pytest.fixture(scope="module")
def embedded() -> Iterator[ServerHandle]:
    with serve_in_thread(make_engine(device="cpu")) as handle:
        yield handle


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def reply_of(target: str, prompt: str, **sampling: object) -> object:
    sampling = {"max_tokens": 24, "temperature": 0, "logprobs": True, **sampling}
    with Client(target) as client:
        reply = client.generate(prompt, **sampling)
    reply.request_id = ""
    return reply


def test_a_scheduler_host_without_torch_serves_what_the_embedded_server_serves(
    cluster: Cluster, embedded: ServerHandle
) -> None:
    for prompt, sampling in [
        ("Once upon a time", {"top_logprobs": 3}),
        ("The cat", {"echo": True, "top_logprobs": 2}),
        ("Lily", {"temperature": 0.9, "seed": 11}),
    ]:
        assert reply_of(cluster.scheduler.target, prompt, **sampling) == reply_of(
            embedded.target, prompt, **sampling
        )
    with Client(cluster.scheduler.target) as client:
        info = client.model_info()
    assert (info.model_name, info.vocab_size, info.device) == ("stories260K", 512, "cpu")


def test_a_second_scheduler_is_refused(cluster: Cluster, without_torch: dict[str, str]) -> None:
    with grpc.insecure_channel(cluster.worker.target) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.Connect(worker_pb2.ConnectRequest(scheduler_id="another"), timeout=10)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    second = subprocess.run(
        [*SCHEDULER, "--worker", cluster.worker.target],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **without_torch},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "refused" in second.stderr and "one scheduler at a time" in second.stderr
    assert health(cluster.scheduler.target) == SERVING  # the first goes on


def stream_until_lost(target: str, lose: object) -> tuple[grpc.StatusCode, str, float]:
    """Stream a long request, `lose()` the worker once tokens flow; the status the stream
    ends with, its message, and how long after the loss it came."""
    with Client(target) as client:
        stream = client.generate_stream("Once upon a time", max_tokens=480, ignore_eos=True)
        next(stream)
        lose()
        lost_at = time.monotonic()
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
    return ended.value.code(), ended.value.details(), time.monotonic() - lost_at


def expect_unavailable_then_back(
    cluster: Cluster, prompt: str, lose: object, bring_back: object
) -> None:
    target = cluster.scheduler.target
    reference = reply_of(target, prompt)
    assert reference.usage.cached_prompt_tokens == 0
    cached = reply_of(target, prompt)
    assert cached.usage.cached_prompt_tokens > 0  # the cache holds the prompt now
    code, details, after = stream_until_lost(target, lose)
    assert code == grpc.StatusCode.UNAVAILABLE and "unavailable" in details
    assert after < WORKER_TIMEOUT + 3.0
    wait_until(lambda: health(target) == NOT_SERVING, 5, "health NOT_SERVING")
    with pytest.raises(grpc.RpcError) as refused:
        reply_of(target, "Hi")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    bring_back()
    wait_until(lambda: health(target) == SERVING, 30, "health SERVING again")
    again = reply_of(target, prompt)
    assert again == reference  # computed in full: nothing cached before the loss is trusted
    assert_nothing_held(cluster.scheduler)


def assert_nothing_held(scheduler: ServeProcess) -> None:
    url = f"http://127.0.0.1:{scheduler.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        metrics = page.read().decode()
    assert 'loom:kv_cache_usage_perc{model="stories260K"} 0.0' in metrics
    assert 'loom:num_requests_running{model="stories260K",tenant="default"} 0.0' in metrics


def test_a_worker_that_hangs_fails_requests_in_flight_and_serves_again_once_resumed(
    cluster: Cluster,
) -> None:
    worker = cluster.worker.proc
    expect_unavailable_then_back(
        cluster,
        LONG_PROMPTS["hangs"],
        lambda: worker.send_signal(signal.SIGSTOP),
        lambda: worker.send_signal(signal.SIGCONT),
    )


def test_a_worker_that_dies_fails_requests_in_flight_and_serves_again_once_restarted(
    cluster: Cluster,
) -> None:
    port = cluster.worker.target.rsplit(":", 1)[1]

    def restart() -> None:
        cluster.worker = start_worker("--port", port)

    expect_unavailable_then_back(cluster, LONG_PROMPTS["dies"], cluster.worker.stop, restart)
