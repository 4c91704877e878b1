"""Fixtures of the scheduler tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """For modules that run the real model. It is tiny: on a shared 2-core box, intra-op
    threads only fight each other (a step runs about 10x slower with two)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
