"""What a scheduler accepts when its worker comes back: the same model with at least the KV
blocks it was sized for. Worker servers here run in this process, one after another on the
same port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from contract.remote_worker import RemoteWorker
from modelfiles.tokenizer_files import tokenizer_files
from tests.conftest import STORIES_DIR
from tests.server.conftest import wait_until
from worker import create_worker
from worker.config import WorkerServerConfig
from worker.server import WorkerServer


@contextmanager
def serving(num_kv_blocks: int, port: int = 0) -> Iterator[WorkerServer]:
    worker = create_worker(model=str(STORIES_DIR), device="cpu", num_kv_blocks=num_kv_blocks)
    server = WorkerServer(
        worker, WorkerServerConfig(port=port, session_timeout=2.0), tokenizer_files(STORIES_DIR)
    )
    server.start()
    try:
        yield server
    finally:
        server.stop(grace=0)


@pytest.fixture
def port() -> int:
    with serving(64) as server:
        return server.port


def test_a_worker_with_fewer_blocks_is_refused_one_with_more_is_taken(port: int) -> None:
    with serving(64, port):
        remote = RemoteWorker.connect(f"127.0.0.1:{port}", timeout=2.0, startup_timeout=10.0)
    try:
        epoch = remote.session_epoch
        wait_until(lambda: not remote.available, 10, "the worker is seen gone")
        with serving(32, port):
            wait_until(
                lambda: "smaller KV cache" in remote.down_reason, 10, "the smaller one refused"
            )
            assert not remote.available and remote.session_epoch == epoch
        with serving(128, port):
            wait_until(lambda: remote.available, 10, "a worker with more blocks is taken")
            assert remote.session_epoch == epoch + 1
            assert remote.info().num_kv_blocks == 64  # what the scheduler was sized for
    finally:
        remote.close()
