"""The router on loopback in front of real engines (stories260K), all in this process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from frontend.embedded import ServerHandle, serve_in_thread
from router.backend import BackendState
from router.server import RouterHandle, serve_router_in_thread
from scheduler import Engine
from tests.server.conftest import make_engine

# Polls often, so tests see state changes within a fraction of a second.
FAST_HEALTH = {"health_check_interval": 0.05, "health_check_timeout": 1.0}


@pytest.fixture
def start_router() -> Iterator[Callable[..., RouterHandle]]:
    """start_router(*backend_targets, **router_options) -> a running RouterHandle whose
    backends have all been polled once; stopped at teardown."""
    handles: list[RouterHandle] = []

    def start(*targets: str, **options: Any) -> RouterHandle:
        options = {**FAST_HEALTH, **options}
        handle = serve_router_in_thread(backend=tuple(targets), **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(grace=0)


@pytest.fixture
def start_engine() -> Iterator[Callable[..., ServerHandle]]:
    """start_engine(engine=None, **server_options) -> a running engine server (stories260K)."""
    handles: list[ServerHandle] = []

    def start(engine: Engine | None = None, **options: Any) -> ServerHandle:
        handle = serve_in_thread(engine if engine is not None else make_engine(), **options)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(grace=0)


@pytest.fixture
def two_engines(start_engine: Callable[..., ServerHandle]) -> tuple[ServerHandle, ServerHandle]:
    return start_engine(), start_engine()


def backend_state(router: RouterHandle, target: str) -> BackendState:
    [backend] = [b for b in router.router.pool.backends if b.address == target]
    return backend.state


def decisions(router: RouterHandle, target: str, decision: str) -> int:
    return int(router.router.metrics.decision_count(target, decision))
