"""Loom's engine: requests, the block pool, the scheduler, the engine loop and the offline API.

Imports no torch and no grpc; the in-process worker is loaded only by `Engine.from_model_dir`.
Names are imported on first use, so `import scheduler.request` stays light (no tokenizer).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Engine": "scheduler.engine",
    "EngineConfig": "scheduler.config",
    "EngineStats": "scheduler.config",
    "SchedulerConfig": "scheduler.config",
    "CapacityError": "scheduler.errors",
    "DuplicateRequestError": "scheduler.errors",
    "RequestDelta": "scheduler.outputs",
    "RequestOutput": "scheduler.outputs",
    "RequestOutputBuilder": "scheduler.outputs",
    "SequenceOutput": "scheduler.outputs",
    "Usage": "scheduler.outputs",
    "MAX_STOP_STRINGS": "scheduler.request",
    "MAX_STOP_STRING_LENGTH": "scheduler.request",
    "MAX_TOP_LOGPROBS": "scheduler.request",
    "Request": "scheduler.request",
    "RequestStatus": "scheduler.request",
    "SamplingParams": "scheduler.request",
    "Scheduler": "scheduler.scheduler",
    "Tokenizer": "modelfiles.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
