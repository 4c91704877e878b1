"""Real servers on loopback for the gRPC tests: the bundled model, the real engine."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from frontend.embedded import ServerHandle, serve_in_thread
from scheduler import Engine
from tests.conftest import STORIES_DIR

# 256 blocks x 16 tokens: room for 64 concurrent short streams, small enough to exhaust.
NUM_KV_BLOCKS = 256


def make_engine(**engine_kwargs: Any) -> Engine:
    engine_kwargs.setdefault("num_kv_blocks", NUM_KV_BLOCKS)
    return Engine.from_model_dir(STORIES_DIR, **engine_kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a condition until it holds; fail naming it when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


def engine_is_idle(engine: Engine) -> bool:
    """No request left and every KV block free."""
    stats = engine.stats()
    return (
        not engine.has_unfinished()
        and stats.num_running == 0
        and stats.num_waiting == 0
        and stats.num_free_blocks == stats.num_blocks
    )


@pytest.fixture
def start_server() -> Iterator[Callable[..., ServerHandle]]:
    """start_server(engine=None, **server_options) -> a running ServerHandle, stopped at
    teardown."""
    handles: list[ServerHandle] = []

    def start(engine: Engine | None = None, **options: Any) -> ServerHandle:
        handle = serve_in_thread(engine if engine is not None else make_engine(), **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(grace=0)


@pytest.fixture
def server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    return start_server()
