"""Engines over faulty doubles (tests/reliability/faults.py), embedded and remote, and the
clean runs the requests a fault did not touch must match."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import Client, build_request
from contract.sampling import SamplingParams
from frontend.embedded import ServerHandle, serve_in_thread
from frontend.remote_engine import remote_engine
from modelfiles.tokenizer import load_tokenizer
from modelfiles.tokenizer_files import tokenizer_files
from scheduler import Engine
from scheduler.config import EngineConfig
from tests.conftest import STORIES_DIR
from tests.reliability.faults import FaultyWorker, NonFiniteRunner, TcpProxy
from tests.server.conftest import NUM_KV_BLOCKS, engine_is_idle, make_engine, wait_until
from worker.config import WorkerServerConfig
from worker.runner import ModelRunner
from worker.server import WorkerServer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WORKER_TIMEOUT = 1.0  # seconds a remote step may take before the worker counts as gone
PROMPTS = [
    "Once upon a time",
    "The little dog",
    "Lily and Tom went to the park",
    "One day, a big bird",
    "The sun was hot",
    "Sam had a red ball",
]


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status


def config_of(**settings: Any) -> EngineConfig:
    settings.setdefault("num_kv_blocks", NUM_KV_BLOCKS)
    return EngineConfig.from_kwargs(model=str(STORIES_DIR), device="cpu", **settings)


def runner_of(config: EngineConfig, poison: float | None = None) -> ModelRunner:
    """The embedded runner; with `poison`, one whose marked requests get that logit."""
    if poison is None:
        return ModelRunner(config.worker)
    runner = NonFiniteRunner(config.worker)
    runner.value = poison
    return runner


def faulty_engine(poison: float | None = None, **settings: Any) -> tuple[Engine, FaultyWorker]:
    config = config_of(**settings)
    worker = FaultyWorker(runner_of(config, poison))
    return Engine(worker, load_tokenizer(config.model.model), config), worker


_clean: dict[tuple[str, int], list[int]] = {}


def clean_tokens(prompt: str, max_tokens: int) -> list[int]:
    """Greedy tokens of `prompt` run alone on a fresh engine: what any request a fault did
    not touch must get (greedy output does not depend on the batch)."""
    key = (prompt, max_tokens)
    if key not in _clean:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        [output] = make_engine(device="cpu").generate(prompt, params)
        _clean[key] = list(output.token_ids)
    return _clean[key]


def greedy(client: Client, prompt: str, max_tokens: int, **fields: Any) -> list[int]:
    reply = client.generate(prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True, **fields)
    return list(reply.token_ids)


def assert_idle(server: ServerHandle) -> None:
    """Nothing running or waiting and every block free, on the engine itself."""
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "no request left, every block free")


@dataclass
class RemoteRig:
    """An engine server driving a worker server through a proxy that can drop connections."""

    worker: FaultyWorker
    worker_server: WorkerServer
    proxy: TcpProxy
    server: ServerHandle

    def close(self) -> None:
        self.server.stop(grace=0)
        self.server.engine.close()
        self.proxy.close()
        self.worker.release()
        self.worker_server.stop(grace=0)


@pytest.fixture
def start_remote() -> Iterator[Callable[..., RemoteRig]]:
    rigs: list[RemoteRig] = []

    def start(poison: float | None = None, **server_options: Any) -> RemoteRig:
        config = config_of()
        worker = FaultyWorker(runner_of(config, poison))
        worker_server = WorkerServer(
            worker, WorkerServerConfig(port=0, session_timeout=2.0), tokenizer_files(STORIES_DIR)
        )
        port = worker_server.start()
        proxy = TcpProxy(("127.0.0.1", port))
        engine = remote_engine(EngineConfig(), proxy.target, WORKER_TIMEOUT, 10.0)
        rig = RemoteRig(worker, worker_server, proxy, serve_in_thread(engine, **server_options))
        rigs.append(rig)
        return rig

    yield start
    for rig in rigs:
        rig.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerHandle]]:
    handles: list[ServerHandle] = []

    def start(engine: Engine, **options: Any) -> ServerHandle:
        handle = serve_in_thread(engine, **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(grace=0)


def open_stream(stub: Any, prompt: str, max_tokens: int, **fields: Any) -> Any:
    """A greedy GenerateStream call, started at once (the client's generator is lazy)."""
    request = build_request(prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True, **fields)
    return stub.GenerateStream(request)


def tokens_of(call: Any) -> list[int]:
    """Every token of a stream, read to its end (raises the call's error)."""
    return [token for message in call for token in message.token_ids]


def code_of(call: Any) -> grpc.StatusCode:
    """How a stream ended, read to its end."""
    try:
        for _ in call:
            pass
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
