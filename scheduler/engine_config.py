"""How an engine is set up, and what it reports about itself."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.queue_policy import QUEUE_POLICIES


@dataclass(slots=True, frozen=True)
class EngineConfig:
    block_size: int = 16  # tokens per KV block; must match the worker's
    max_num_seqs: int = 256  # most running requests
    max_num_batched_tokens: int = 2048  # token budget of one step
    long_prefill_threshold: int = 512  # largest prefill chunk of one request in one step
    enable_prefix_caching: bool = True
    max_queued_requests: int | None = None  # waiting requests beyond this are refused; None: no cap
    queue_policy: str = "fcfs"  # "fcfs" or "priority" (lower priority value runs first)
    max_model_len: int | None = None  # None: the model's own maximum

    def __post_init__(self) -> None:
        if self.max_queued_requests is not None and self.max_queued_requests < 1:
            raise ValueError(f"max_queued_requests must be >= 1, got {self.max_queued_requests}")
        if self.queue_policy not in QUEUE_POLICIES:
            raise ValueError(
                f"queue_policy must be one of {', '.join(QUEUE_POLICIES)}, "
                f"got {self.queue_policy!r}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {self.max_model_len}")


@dataclass(slots=True, frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int  # queued or preempted, including requests not yet taken by a step
    num_blocks: int
    num_free_blocks: int  # held by no request, whether or not the prefix cache still has them
    num_preemptions: int
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found

    @property
    def kv_cache_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks
