"""Paths to the real model files every test suite uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="module")
def triton_interpreter() -> Iterator[None]:
    """Triton's CPU interpreter for one test module: TRITON_INTERPRET=1 while its tests run,
    unset again after, so no other test or process it starts inherits it. Triton reads it
    when it is first imported, which only the Triton attention backend does, lazily: the
    first module to use this imports it in interpreted form for the whole session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        yield


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the C++ CPU kernels once, before any test: servers the tests start in their own
    processes then load the cached build instead of each waiting on the compiler."""
    from worker.cpu_kernels import load_cpu_kernels

    load_cpu_kernels()
