"""Paths to the real model files every test suite uses."""

from __future__ import annotations

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


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build the C++ CPU kernels once, before any test: servers the tests start in their own
    processes then load the cached build instead of each waiting on the compiler."""
    from worker.cpu_kernels import load_cpu_kernels

    load_cpu_kernels()
