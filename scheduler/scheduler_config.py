"""The scheduler's settings, and what one `schedule()` call decides."""

from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.request import Request
from worker.step import StepInput


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    num_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    long_prefill_threshold: int = 512
    enable_prefix_caching: bool = True
    queue_policy: str = "fcfs"
    max_model_len: int = 2048

    def __post_init__(self) -> None:
        for name in ("num_blocks", "block_size", "max_num_seqs", "long_prefill_threshold"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        # One token per running request must always fit: that is what keeps decodes flowing.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens must be >= max_num_seqs ({self.max_num_seqs}), "
                f"got {self.max_num_batched_tokens}"
            )


@dataclass(slots=True)
class SchedulerOutput:
    step_input: StepInput
    scheduled: list[Request] = field(default_factory=list)  # in the order they were scheduled
    num_preempted: int = 0
