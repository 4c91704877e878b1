"""deploy/kubernetes/: the manifests parse, and agree with each other and with the CLI flags:
the router's backends are the engine replicas' names and port, probes and Services point at
the ports the commands listen on, the engines get a GPU each."""

from __future__ import annotations

import re

import pytest
import yaml

from common.flags import settings_from_args
from frontend.cli import build_parser as serve_parser
from frontend.config import ServeConfig
from router.cli import build_parser as router_parser
from router.config import RouterConfig
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def container(workload: dict) -> dict:
    [only] = workload["spec"]["template"]["spec"]["containers"]
    return only


def port_number(container: dict, name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    [port] = [p for p in container["ports"] if p["name"] == name_or_number]
    return port["containerPort"]


def check_service(service: dict, workload: dict, grpc_port: int, metrics_port: int) -> None:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
    targets = {p["name"]: port_number(container(workload), p["targetPort"])
               for p in service["spec"]["ports"]}  # fmt: skip
    assert targets == {"grpc": grpc_port, "metrics": metrics_port}


def test_engine_replicas(objects: dict) -> None:
    engines = objects[("StatefulSet", "loom-engine")]
    service = objects[("Service", engines["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"  # a DNS name per replica
    assert service["spec"]["publishNotReadyAddresses"] is True
    engine = container(engines)
    assert engine["command"][:4] == ["python", "-m", "frontend", "serve"]
    config: ServeConfig = settings_from_args(
        ServeConfig, serve_parser().parse_args(engine["command"][3:])
    )
    frontend = config.frontend
    assert frontend.host == "0.0.0.0" and config.engine.model.device == "cuda"
    check_service(service, engines, frontend.port, frontend.metrics_port)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert engine[probe]["grpc"]["port"] == frontend.port, probe
    for kind in ("requests", "limits"):
        assert engine["resources"][kind]["nvidia.com/gpu"] == 1
    [mount] = engine["volumeMounts"]
    assert config.engine.model.model.startswith(mount["mountPath"] + "/") and mount["readOnly"]
    pod = engines["spec"]["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == [mount["name"]]
    assert pod["terminationGracePeriodSeconds"] > frontend.shutdown_timeout


def test_router_routes_to_every_engine_replica(objects: dict) -> None:
    router = objects[("Deployment", "loom-router")]
    engines = objects[("StatefulSet", "loom-engine")]
    command = container(router)["command"]
    assert command[:4] == ["python", "-m", "router", "serve"]
    config: RouterConfig = settings_from_args(RouterConfig, router_parser().parse_args(command[3:]))
    engine_port = settings_from_args(
        ServeConfig, serve_parser().parse_args(container(engines)["command"][3:])
    ).frontend.port
    name, service = engines["metadata"]["name"], engines["spec"]["serviceName"]
    replicas = engines["spec"]["replicas"]
    assert config.backends == tuple(f"{name}-{i}.{service}:{engine_port}" for i in range(replicas))
    assert config.host == "0.0.0.0"
    check_service(objects[("Service", "loom-router")], router, config.port, config.metrics_port)
    probes = container(router)
    assert probes["readinessProbe"]["grpc"]["port"] == config.port
    assert probes["livenessProbe"]["tcpSocket"]["port"] == config.port
    resources = container(router)["resources"]
    assert "nvidia.com/gpu" not in resources["requests"] and resources["requests"]["cpu"]
    pod = router["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_timeout
    assert container(router)["image"] == container(engines)["image"]


def test_readme_points_at_the_manifests() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "deploy/kubernetes/" in readme
    for path in DEPLOY.glob("*.yaml"):
        assert re.search(rf"\b{re.escape(path.name)}\b", readme), path.name
