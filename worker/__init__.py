"""The worker: weights, KV cache, forward pass and sampling behind the step contract.

Importing this package (or contract.step / worker.config) does not import torch; the runner is
imported only when a worker is created.
"""

from __future__ import annotations

from typing import Any

from common.settings import from_flat
from contract.step import Worker
from worker.config import CacheConfig, ModelConfig, ParallelConfig, WorkerConfig


def create_worker(config: WorkerConfig | None = None, **settings: Any) -> Worker:
    """Load the model and allocate the KV cache; returns the in-process worker. Takes a
    WorkerConfig, or its fields by name (`create_worker(model=dir, num_kv_blocks=64)`).
    With tensor_parallel_size N > 1 this process is rank 0 of N (worker/tp_launch.py: the
    other ranks are started here unless a launcher started them); `close()` the worker to
    stop them."""
    if config is None:
        config = from_flat(WorkerConfig, **settings)
    elif settings:
        raise TypeError("pass a WorkerConfig or settings by name, not both")
    if config.parallel.tensor_parallel_size > 1:
        from worker.tp_launch import start_tensor_parallel

        return start_tensor_parallel(config)
    from worker.runner import ModelRunner

    return ModelRunner(config)


__all__ = ["CacheConfig", "ModelConfig", "ParallelConfig", "WorkerConfig", "create_worker"]
