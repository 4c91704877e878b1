"""`python -m router serve`: its flags are RouterConfig's fields, bad ones exit 2, and the real
process routes, drains on SIGTERM and loads no engine code."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from client import Client
from common.flags import flag_name, settings_from_args
from common.settings import leaf_fields
from frontend.embedded import ServerHandle
from router.cli import build_parser
from router.config import RouterConfig
from tests.conftest import REPO_ROOT
from tests.server.serve_process import ServeProcess
from tests.test_layering import imported_after, serve_options

ROUTER = [sys.executable, "-m", "router", "serve"]


def test_every_flag_is_exactly_one_settings_field() -> None:
    assert serve_options(build_parser()) == {flag_name(name) for name in leaf_fields(RouterConfig)}
    args = build_parser().parse_args(["serve", "--backend", "a:1", "--backend", "b:2"])
    assert settings_from_args(RouterConfig, args) == RouterConfig(backend=("a:1", "b:2"))


def run_router_to_exit(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ROUTER, *flags],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ([], "give at least one --backend HOST:PORT"),
        (["--backend", "nowhere"], "a backend is HOST:PORT, got 'nowhere'"),
        (["--backend", "a:1", "--backend", "a:1"], "a backend is named twice"),
        (["--backend", "a:1", "--policy", "random"], "invalid choice: 'random'"),
        (["--backend", "a:1", "--health-check-interval", "0"], "health_check_interval must be"),
        (["--backend", "a:1", "--backend-api-key-file", "/none"], "no file at /none"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(flags: list[str], message: str) -> None:
    result = run_router_to_exit(*flags)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_router_loads_no_engine_code() -> None:
    loaded = imported_after("import router.cli, router.server, router.servicer")
    assert "grpc" in loaded
    assert not loaded & {"scheduler", "worker", "torch", "sentencepiece", "numpy"}


def test_serve_routes_and_drains_on_sigterm(
    two_engines: tuple[ServerHandle, ServerHandle],
) -> None:
    a, b = two_engines
    router = ServeProcess(
        ROUTER
        + [
            "--port",
            "0",
            "--backend",
            a.target,
            "--backend",
            b.target,
            "--metrics-port",
            "0",
            "--policy",
            "round_robin",
        ]  # fmt: skip
    )
    try:
        with Client(router.target, timeout=30) as client:
            for i in range(4):
                assert client.generate(f"Hi {i}", max_tokens=3).usage.completion_tokens == 3
        assert [e.engine.stats().prefix_cache_queries > 0 for e in two_engines] == [True, True]
        assert router.metrics_port is not None
        router.proc.send_signal(signal.SIGTERM)
        assert router.proc.wait(timeout=30) == 0
    finally:
        router.stop()
    log = router.log()
    assert f"backend {a.target} is up" in log
    assert log.count("decision=round_robin status=OK") == 4
