"""docker-compose.yml: the services, and the loom service's command run here for real."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml

from client import Client
from tests.conftest import REPO_ROOT
from tests.server.serve_process import ServeProcess


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_loom_service(compose: dict) -> None:
    loom = compose["services"]["loom"]
    command = loom["command"]
    assert command[:4] == ["python", "-m", "scheduler", "serve"]
    assert flag(command, "--host") == "0.0.0.0"
    assert "--model" not in command  # the bundled model
    grpc_port, metrics_port = flag(command, "--port"), flag(command, "--metrics-port")
    assert f"{grpc_port}:{grpc_port}" in loom["ports"]
    assert f"{metrics_port}:{metrics_port}" in loom["ports"]
    assert loom["restart"] in ("always", "unless-stopped", "on-failure")
    check = loom["healthcheck"]["test"]
    assert check[0] == "CMD"
    assert check[1:5] == ["python", "-m", "scheduler", "health"]
    assert flag(check, "--target") == f"127.0.0.1:{grpc_port}"
    assert "profiles" not in loom  # starts with a plain `docker compose up`
    # Docker's grace period outlasts the drain, so SIGTERM is never cut short by a kill.
    assert float(loom["stop_grace_period"].rstrip("s")) > float(flag(command, "--shutdown-timeout"))


def test_gpu_service(compose: dict) -> None:
    gpu = compose["services"]["loom-gpu"]
    assert gpu["profiles"] == ["gpu"]
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    command = gpu["command"]
    assert flag(command, "--device") == "cuda"
    [volume] = gpu["volumes"]
    host_dir, container_dir, mode = volume.rsplit(":", 2)
    assert host_dir.startswith("${LOOM_MODEL_DIR")
    assert container_dir == flag(command, "--model")
    assert mode == "ro"
    assert gpu["healthcheck"] == compose["services"]["loom"]["healthcheck"]
    # Both may run side by side: no host port in common.
    assert not set(gpu["ports"]) & set(compose["services"]["loom"]["ports"])


def with_free_ports(command: list[str]) -> list[str]:
    """The compose command with this machine's python and ports the OS picks."""
    local = [sys.executable, *command[1:]]
    for name in ("--port", "--metrics-port"):
        local[local.index(name) + 1] = "0"
    return local


def test_compose_command_serves_a_client(compose: dict) -> None:
    loom = compose["services"]["loom"]
    serve = ServeProcess(with_free_ports(loom["command"]))
    try:
        check = [sys.executable, *loom["healthcheck"]["test"][2:]]
        check[check.index("--target") + 1] = serve.target
        health = subprocess.run(check, capture_output=True, text=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr
        assert "SERVING" in health.stdout
        with Client(serve.target) as client:
            reply = client.generate("Once upon a time", max_tokens=8, temperature=0)
        assert reply.usage.completion_tokens == 8
        assert serve.metrics_port is not None
        url = f"http://127.0.0.1:{serve.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as page:
            assert 'loom:generation_tokens_total{model="stories260K",tenant="default"} 8.0' in (
                page.read().decode()
            )
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=30) == 0
    finally:
        serve.stop()
    # The health command fails once nothing serves there.
    assert subprocess.run(check, capture_output=True, timeout=60).returncode == 1


def test_router_profile(compose: dict) -> None:
    from frontend.cli import build_parser as serve_parser
    from router.cli import build_parser as router_parser

    services = compose["services"]
    router = services["loom-router"]
    replicas = {name: s for name, s in services.items() if name.startswith("loom-replica-")}
    assert len(replicas) == 2
    assert all(s["profiles"] == ["router"] for s in [router, *replicas.values()])
    args = router_parser().parse_args(router["command"][3:])
    assert router["command"][:4] == ["python", "-m", "router", "serve"]
    assert args.host == "0.0.0.0" and f"{args.port}" == router["ports"][0].split(":")[1]
    # Each --backend is a replica, on the port its own command listens on.
    backends = {}
    for name, replica in replicas.items():
        command = replica["command"]
        assert command[:4] == ["python", "-m", "scheduler", "serve"]
        serve = serve_parser().parse_args(command[3:])
        assert serve.host == "0.0.0.0"
        backends[f"{name}:{serve.port}"] = name
        assert "ports" not in replica  # reached through the router only
        assert replica["healthcheck"] == services["loom"]["healthcheck"]
    assert set(args.backend) == set(backends)
    assert set(router["depends_on"]) == set(replicas)
    published = [p for s in ("loom", "loom-gpu") for p in services[s]["ports"]]
    assert not {p.split(":")[0] for p in router["ports"]} & {p.split(":")[0] for p in published}
    assert float(router["stop_grace_period"].rstrip("s")) > args.shutdown_timeout


def test_router_command_serves_a_client(compose: dict) -> None:
    from frontend.server import serve_in_thread
    from tests.server.conftest import make_engine

    command = with_free_ports(compose["services"]["loom-router"]["command"])
    with serve_in_thread(make_engine()) as a, serve_in_thread(make_engine()) as b:
        targets = iter([a.target, b.target])
        local = [next(targets) if c.startswith("loom-replica-") else c for c in command]
        router = ServeProcess(local)
        try:
            with Client(router.target) as client:
                for i in range(2):
                    reply = client.generate(f"Once upon a time {i}", max_tokens=4)
                    assert reply.usage.completion_tokens == 4
            router.proc.send_signal(signal.SIGTERM)
            assert router.proc.wait(timeout=30) == 0
        finally:
            router.stop()
