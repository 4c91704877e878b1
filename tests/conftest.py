"""Paths to the real model files every test suite uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = REPO_ROOT / "tests"
# Suites whose every test starts a server (in a thread or a process).
SERVER_SUITES = {"server", "remote", "router", "reliability", "loadtest"}
STORIES_DIR = REPO_ROOT / "models" / "stories260K"
# Read-only files beside the checkout; tests that need them skip when they are absent.
SHARED_MODELS_DIR = REPO_ROOT.parent / "shared" / "models"
LLAMA2_TOKENIZER = SHARED_MODELS_DIR / "llama2-tokenizer" / "tokenizer.model"


@pytest.fixture(scope="session")
def stories_dir() -> Path:
    return STORIES_DIR


@pytest.fixture(scope="session")
def llama2_tokenizer_path() -> Path:
    if not LLAMA2_TOKENIZER.exists():
        pytest.skip(f"{LLAMA2_TOKENIZER} is absent")
    return LLAMA2_TOKENIZER


@pytest.fixture(scope="session", autouse=True)
def triton_interpreter() -> Iterator[None]:
    """Triton's CPU interpreter for the whole session: TRITON_INTERPRET=1 from the first test
    on. Triton reads it once, when it is first imported, and more than the Triton tests
    import it (transformers does), so it is set before any test runs rather than around
    those tests; the processes tests start inherit it, which changes nothing for the CPU
    backends they run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        yield


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the C++ CPU kernels once, before any test: servers the tests start in their own
    processes then load the cached build instead of each waiting on the compiler."""
    from worker.cpu_kernels import load_cpu_kernels

    load_cpu_kernels()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`server` for the server suites (and tests marked so elsewhere), `unit` for every test
    neither `server` nor `slow`."""
    for item in items:
        if item.path.relative_to(TESTS_DIR).parts[0] in SERVER_SUITES:
            item.add_marker(pytest.mark.server)
        if not (item.get_closest_marker("server") or item.get_closest_marker("slow")):
            item.add_marker(pytest.mark.unit)
