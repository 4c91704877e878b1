"""The worker: weights, KV cache, forward pass and sampling behind the step contract.

Importing this package (or worker.step / worker.config) does not import torch; the runner is
imported only when a worker is created.
"""

from __future__ import annotations

from worker.config import WorkerConfig
from worker.step import Worker


def create_worker(config: WorkerConfig) -> Worker:
    """Load the model and allocate the KV cache; returns the in-process worker."""
    from worker.runner import ModelRunner

    return ModelRunner(config)


__all__ = ["WorkerConfig", "create_worker"]
