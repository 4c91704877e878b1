"""docker-compose.yml: the services, and the commands of loom and of the remote profile run
here for real."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import yaml

from client import Client
from tests.conftest import REPO_ROOT
from tests.server.serve_process import ServeProcess

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_loom_service(compose: dict) -> None:
    loom = compose["services"]["loom"]
    command = loom["command"]
    assert command[:4] == ["python", "-m", "frontend", "serve"]
    assert flag(command, "--host") == "0.0.0.0"
    assert "--model" not in command  # the bundled model
    grpc_port, metrics_port = flag(command, "--port"), flag(command, "--metrics-port")
    assert f"{grpc_port}:{grpc_port}" in loom["ports"]
    assert f"{metrics_port}:{metrics_port}" in loom["ports"]
    assert loom["restart"] in ("always", "unless-stopped", "on-failure")
    check = loom["healthcheck"]["test"]
    assert check[0] == "CMD"
    assert check[1:5] == ["python", "-m", "frontend", "health"]
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
        if name in local:
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
        assert command[:4] == ["python", "-m", "frontend", "serve"]
        serve = serve_parser().parse_args(command[3:])
        assert serve.host == "0.0.0.0"
        backends[f"{name}:{serve.port}"] = name
        assert "ports" not in replica  # reached through the router only
        assert replica["healthcheck"] == services["loom"]["healthcheck"]
    assert set(args.backend) == set(backends)
    assert set(router["depends_on"]) == set(replicas)
    published = [
        p
        for name, s in services.items()
        if name != "loom-router"
        for p in s.get("ports", [])
    ]
    assert not {p.split(":")[0] for p in router["ports"]} & {p.split(":")[0] for p in published}
    assert float(router["stop_grace_period"].rstrip("s")) > args.shutdown_timeout


def test_router_command_serves_a_client(compose: dict) -> None:
    from frontend.embedded import serve_in_thread
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
@pytest.mark.parametrize(
    ("profile", "worker_name", "scheduler_name"),
    [
        ("remote", "loom-worker", "loom-scheduler"),
        ("remote-gpu", "loom-worker-gpu", "loom-scheduler-gpu"),
    ],
)
def test_remote_profiles_mount_the_model_only_in_the_worker(
    compose: dict, profile: str, worker_name: str, scheduler_name: str
) -> None:
    services = compose["services"]
    worker, scheduler = services[worker_name], services[scheduler_name]
    assert worker["profiles"] == scheduler["profiles"] == [profile]
    command = worker["command"]
    assert command[:4] == ["python", "-m", "worker", "serve"]
    [volume] = worker["volumes"]
    host_dir, container_dir, mode = volume.rsplit(":", 2)
    assert host_dir.startswith("${LOOM_MODEL_DIR") and mode == "ro"
    assert container_dir == flag(command, "--model") and flag(command, "--host") == "0.0.0.0"
    worker_port = flag(command, "--port")
    assert flag(worker["healthcheck"]["test"], "--target") == f"127.0.0.1:{worker_port}"
    # The scheduler has no model: it reaches the worker by its service name, once healthy.
    assert "volumes" not in scheduler
    assert "--model" not in scheduler["command"]
    assert flag(scheduler["command"], "--worker") == f"{worker_name}:{worker_port}"
    assert scheduler["depends_on"] == {worker_name: {"condition": "service_healthy"}}
    assert scheduler["healthcheck"] == services["loom"]["healthcheck"]
    assert float(scheduler["stop_grace_period"].rstrip("s")) > float(
        flag(scheduler["command"], "--shutdown-timeout")
    )
    gpus = worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
    assert (gpus is not None) == (profile == "remote-gpu")


def test_no_two_services_share_a_host_port(compose: dict) -> None:
    ports = [port for service in compose["services"].values() for port in service.get("ports", [])]
    host_ports = [port.split(":")[0] for port in ports]
    assert len(host_ports) == len(set(host_ports))


def test_remote_profile_commands_serve_a_client(compose: dict) -> None:
    """The worker and scheduler commands of the remote profile, run here: the bundled model
    in place of the mount, ports the OS picks, the worker's address for the service name."""
    worker_command = list(compose["services"]["loom-worker"]["command"])
    worker_command[worker_command.index("--model") + 1] = str(REPO_ROOT / "models" / "stories260K")
    worker = ServeProcess(with_free_ports(worker_command))
    serve = None
    try:
        scheduler_command = with_free_ports(compose["services"]["loom-scheduler"]["command"])
        scheduler_command[scheduler_command.index("--worker") + 1] = worker.target
        serve = ServeProcess(scheduler_command)
        for target in (worker.target, serve.target):
            check = [sys.executable, "-m", "frontend", "health", "--target", target]
            assert subprocess.run(check, capture_output=True, timeout=60).returncode == 0
        with Client(serve.target) as client:
            reply = client.generate("Once upon a time", max_tokens=8, temperature=0)
        assert reply.usage.completion_tokens == 8
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(timeout=30) == 0
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0
    finally:
        if serve is not None:
            serve.stop()
        worker.stop()


def test_every_documented_profile_command_names_its_services(compose: dict) -> None:
    """`docker compose --profile P up -d` alone also starts every service without a profile
    (the bundled `loom`): each documented command names the services it means, all of them
    in profile P."""
    texts = (REPO_ROOT / "README.md").read_text() + (REPO_ROOT / "docker-compose.yml").read_text()
    commands = re.findall(r"docker compose --profile\s+(\S+)\s+up -d((?:\s+loom[\w-]*)*)", texts)
    assert len(commands) >= 5
    for profile, names in commands:
        services = names.split()
        assert services, f"--profile {profile} up -d names no service"
        for name in services:
            assert profile in compose["services"][name].get("profiles", []), (profile, name)
