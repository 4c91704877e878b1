"""Processes for the remote-worker tests: `python -m worker serve` and a scheduler that may
not import torch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.server.serve_process import ServeProcess

WORKER = [sys.executable, "-m", "worker", "serve", "--device", "cpu", "--port", "0"]
SCHEDULER = [sys.executable, "-m", "frontend", "serve", "--port", "0"]


def start_worker(*flags: str) -> ServeProcess:
    return ServeProcess([*WORKER, *flags])


@pytest.fixture(scope="session")
def without_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which `import torch` fails: what a scheduler host without the GPU
    stack looks like to Python."""
    root: Path = tmp_path_factory.mktemp("no-torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text(
        'raise ImportError("torch is not installed on the scheduler host")\n'
    )
    return {"PYTHONPATH": f"{root}{os.pathsep}{REPO_ROOT}"}
