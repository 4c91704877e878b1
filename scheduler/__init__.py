"""Loom's scheduler side: requests, the block pool, the scheduler and the engine loop.

Imports no torch; the in-process worker is loaded only by `Engine.from_model_dir`.
"""

from scheduler.engine import Engine, EngineConfig, EngineStats
from scheduler.errors import CapacityError
from scheduler.outputs import RequestDelta, RequestOutput, RequestOutputBuilder, Usage
from scheduler.request import (
    MAX_STOP_STRING_LENGTH,
    MAX_STOP_STRINGS,
    MAX_TOP_LOGPROBS,
    Request,
    RequestStatus,
    SamplingParams,
)
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.tokenizer import Tokenizer

__all__ = [
    "MAX_STOP_STRINGS",
    "MAX_STOP_STRING_LENGTH",
    "MAX_TOP_LOGPROBS",
    "CapacityError",
    "Engine",
    "EngineConfig",
    "EngineStats",
    "Request",
    "RequestDelta",
    "RequestOutput",
    "RequestOutputBuilder",
    "RequestStatus",
    "SamplingParams",
    "Scheduler",
    "SchedulerConfig",
    "Tokenizer",
    "Usage",
]
