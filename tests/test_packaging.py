"""The quick start, CI and packaging agree with each other and with the code."""

from __future__ import annotations

import re
import subprocess
import sys

from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import REPO_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

README = (REPO_ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith("python3")]


def constraint_pins() -> dict[str, Version]:
    pins = {}
    for line in (REPO_ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", line
            pins[canonical(req.name)] = Version(spec.version)
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    serve, test = readme_commands()[:2]
    assert serve.endswith("python -m frontend serve")
    assert "-c constraints.txt" in serve
    assert test.endswith("python -m pytest -q")
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert ci_lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in ci_lines
    assert ci_lines.index(".venv/bin/ruff check .") < ci_lines.index(test)
    assert ci_lines[-1] == test


def test_every_dependency_is_pinned_within_its_range() -> None:
    pins = constraint_pins()
    project = PYPROJECT["project"]
    for line in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(line)
        name = canonical(req.name)
        assert name in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (line, pins[name])
    assert pins["torch"] == Version("2.13.0")


def test_runtime_floors_cover_the_committed_stubs() -> None:
    stub = (REPO_ROOT / "loompb" / "serving_pb2_grpc.py").read_text()
    grpc_version = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", stub).group(1)
    pb2 = (REPO_ROOT / "loompb" / "serving_pb2.py").read_text()
    protobuf_version = re.search(r"Protobuf Python Version: ([\d.]+)", pb2).group(1)
    floors = {}
    for line in PYPROJECT["project"]["dependencies"]:
        req = Requirement(line)
        for spec in req.specifier:
            if spec.operator == ">=":
                floors[canonical(req.name)] = Version(spec.version)
    # The stubs refuse to import under an older runtime, so the ranges must not admit one.
    assert floors["grpcio"] >= Version(grpc_version)
    assert floors["protobuf"] >= Version(protobuf_version)


def test_no_top_level_proto_package() -> None:
    # `proto` would shadow the module of the widely installed proto-plus distribution.
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.split("*")[0].rstrip(".") == "proto" for p in packages)
    assert not (REPO_ROOT / "proto" / "__init__.py").exists()


def run_python(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout


def test_server_modules_import_no_torch_and_client_needs_no_server_code() -> None:
    server = run_python(
        "import sys, frontend.server, frontend.cli, frontend.servicer;"
        "print('torch' in sys.modules)"
    )
    assert server.strip() == "False"
    client = run_python(
        "import sys, client, client.cli;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'scheduler', 'worker', 'torch'}))"
    )
    assert client.strip() == "[]"


def readme_section(heading: str) -> str:
    return re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", README, re.S | re.M).group(1)


def test_serve_takes_every_documented_flag() -> None:
    help_text = run_python(
        "from frontend.cli import build_parser; build_parser().parse_args(['serve', '--help'])"
    )
    table = readme_section("Server flags (`python -m frontend serve`)")
    for flag in re.findall(r"^\| `(--[a-z-]+)`", table, re.MULTILINE) + [
        "--model", "--host", "--port", "--device", "--dtype", "--block-size", "--num-kv-blocks",
        "--kv-cache-memory", "--max-num-seqs", "--max-num-batched-tokens",
        "--long-prefill-threshold", "--enable-prefix-caching", "--no-enable-prefix-caching",
        "--max-queued-requests", "--metrics-port", "--shutdown-timeout", "--log-level",
    ]:  # fmt: skip
        assert flag in help_text, flag


def test_the_image_copies_every_package() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    packages = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in {p.split("*")[0] for p in packages}:
        assert f"COPY {package} ./{package}\n" in dockerfile, package


def test_the_image_user_owns_the_caches_its_kernels_compile_into() -> None:
    # The user has no home, so each cache is named and created for it: without a writable
    # TRITON_CACHE_DIR, Triton could not store the GPU kernels it compiles at start.
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "useradd --system --uid 10001 --no-create-home loom" in dockerfile
    assert "USER loom" in dockerfile
    for variable in ("TORCH_EXTENSIONS_DIR", "TRITON_CACHE_DIR"):
        assert re.search(rf"^\s+{variable}=/opt/loom/\.cache/\w+", dockerfile, re.MULTILINE)
        created = re.search(rf'mkdir -p [^\n]*"\${variable}"', dockerfile)
        owned = re.search(rf'chown -R loom [^\n]*"\${variable}"', dockerfile)
        assert created and owned, variable


def test_router_serve_takes_every_documented_flag() -> None:
    help_text = run_python(
        "from router.cli import build_parser; build_parser().parse_args(['serve', '--help'])"
    )
    table = readme_section("Several replicas behind one endpoint (`python -m router serve`)")
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    flags = {flag for row in rows for flag in re.findall(r"`(--[a-z-]+)", row.split(" | ")[0])}
    assert len(flags) >= 20
    for flag in flags:
        assert flag in help_text, flag
