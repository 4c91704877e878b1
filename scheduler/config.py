"""The engine's settings, validated once, and what an engine reports about itself.

`EngineConfig` nests the scheduler's own fields beside the worker's (worker/config.py), so
every layer takes the part it needs and none declares a setting again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.checks import integer, number, one_of
from common.settings import check_settings, from_flat, setting
from scheduler.queue_policy import QUEUE_POLICIES
from scheduler.speculation import PROPOSERS
from worker.config import (
    ENGINE_SIDE_SETTINGS,
    CacheConfig,
    LoraConfig,
    ModelConfig,
    ParallelConfig,
    WorkerConfig,
)

__all__ = ["ENGINE_SIDE_SETTINGS", "EngineConfig", "EngineStats", "SchedulerConfig"]


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    max_num_seqs: int = setting(256, "most requests running in one step", integer(1))
    max_num_batched_tokens: int = setting(2048, "token budget of one step", integer(1))
    long_prefill_threshold: int = setting(
        512, "largest prefill chunk one request gets in a step", integer(1)
    )
    max_queued_requests: int | None = setting(
        None,
        "waiting requests beyond this get RESOURCE_EXHAUSTED (default: no cap)",
        integer(1, optional=True),
    )
    queue_policy: str = setting(
        "fcfs",
        "who is admitted first (fair: per-tenant fair share, VTC; deadline: fair share, then "
        "least slack first)",
        one_of(QUEUE_POLICIES),
        choices=QUEUE_POLICIES,
    )
    # VTC's prices (Sheng et al., OSDI'24): a generated token costs more than a prompt token.
    fair_w_in: float = setting(1.0, "fair share: cost of one prompt token computed", number(0))
    fair_w_out: float = setting(2.0, "fair share: cost of one generated token", number(0))
    policy_preemption: bool = setting(
        True,
        "a waiting request that finds no seat or no block preempts a running one its queue "
        "policy ranks below it (fair, deadline: a tenant further over its share; priority: a "
        "lower priority)",
    )
    preemption_quantum: int = setting(
        16,
        "output tokens a request generates after its admission before a waiting request may "
        "preempt it for share or priority",
        integer(1),
    )
    max_n: int = setting(
        16, "most sequences one request may ask for (n); they share its prompt", integer(1)
    )
    enable_prefix_caching: bool = setting(True, "reuse KV blocks of identical prompt prefixes")
    # Structured output (scheduler/grammars.py): what a request's constraint may cost.
    max_structured_bytes: int = setting(
        65536,
        "largest JSON schema, regex, grammar or choice list a request may bring, in bytes",
        integer(1),
    )
    max_grammar_symbols: int = setting(
        500_000, "most symbols a compiled structured-output grammar may hold", integer(1)
    )
    grammar_compile_fuel: int = setting(
        1_000_000,
        "work a grammar's lexer may take to build (about 50,000 a millisecond)",
        integer(1),
    )
    grammar_cache_size: int = setting(
        256, "compiled structured-output grammars kept for later requests", integer(1)
    )
    # Speculative decoding (scheduler/speculation.py): off until measured worth it.
    speculative: str = setting(
        "off",
        "propose tokens that the model verifies in one step: ngram (prompt lookup: what "
        "followed the last n tokens earlier in the prompt and output); draft (a smaller model "
        "of the same vocabulary, --draft-model, proposes greedily)",
        one_of(PROPOSERS),
        choices=PROPOSERS,
    )
    draft_model: str | None = setting(
        None,
        "speculative draft: the draft model (any model file --model takes), run by the same "
        "worker with a KV cache of its own; its quantized weights stay packed",
        metavar="PATH",
    )
    num_speculative_tokens: int = setting(
        4, "speculative: most tokens proposed per request and step", integer(1, 64)
    )
    speculative_max_batch: int | None = setting(
        None,
        "speculative: no proposals in a step with more running requests than this (default: "
        "2 with ngram, 1 with draft, where each stopped paying on a CPU)",
        integer(1, optional=True),
    )
    speculative_min_acceptance: float = setting(
        0.1,
        "speculative: a request stops speculating when, after 32 proposed tokens, fewer than "
        "this share of them were accepted",
        number(0, 1),
    )

    def __post_init__(self) -> None:
        check_settings(self)
        # One token per running request must always fit: that is what keeps decodes flowing.
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens must be >= max_num_seqs ({self.max_num_seqs}), "
                f"got {self.max_num_batched_tokens}"
            )
        if self.fair_w_in == self.fair_w_out == 0:
            raise ValueError("fair_w_in and fair_w_out must not both be 0")
        if (self.speculative == "draft") != (self.draft_model is not None):
            raise ValueError("draft_model is needed with speculative=draft, and only with it")


@dataclass(slots=True, frozen=True)
class EngineConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    @classmethod
    def from_kwargs(cls, **settings: Any) -> EngineConfig:
        """`EngineConfig.from_kwargs(max_num_seqs=64, block_size=32)`: flat names, the rest at
        their defaults; an unknown name is a TypeError naming it."""
        return from_flat(cls, **settings)

    @property
    def worker(self) -> WorkerConfig:
        return WorkerConfig(
            model=self.model,
            cache=self.cache,
            parallel=self.parallel,
            lora=self.lora,
            max_num_seqs=self.scheduler.max_num_seqs,
            draft_model=self.scheduler.draft_model,
        )


@dataclass(slots=True, frozen=True)
class TenantStats:
    num_running: int
    num_waiting: int  # queued or preempted, including requests not yet taken by a step
    service: float  # fair-share charge so far: w_in per prompt token computed, w_out per output
    preemptions: dict[str, int] = field(default_factory=dict)  # of its requests, by cause
    num_deadlines_met: int = 0
    num_deadlines_missed: int = 0


@dataclass(slots=True, frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int  # queued or preempted, including requests not yet taken by a step
    num_blocks: int
    num_free_blocks: int  # held by no request, whether or not the prefix cache still has them
    num_preemptions: int
    prefix_cache_queries: int  # tokens looked up
    prefix_cache_hits: int  # tokens found
    tenants: dict[str, TenantStats] = field(default_factory=dict)  # every tenant seen
    # Blocks holding a cached prefix, held by a request or not: what an idle engine keeps.
    num_cached_blocks: int = 0
    # LoRA adapters: requests running and waiting per adapter name (those with any), the
    # adapters served, and the most distinct adapters one step runs.
    lora_running: dict[str, int] = field(default_factory=dict)
    lora_waiting: dict[str, int] = field(default_factory=dict)
    loras_served: tuple[str, ...] = ()
    max_loras: int = 0
    # Speculative decoding, since start: tokens proposed, and of those accepted.
    spec_proposed_tokens: int = 0
    spec_accepted_tokens: int = 0

    @property
    def spec_acceptance_rate(self) -> float:
        return (
            self.spec_accepted_tokens / self.spec_proposed_tokens
            if self.spec_proposed_tokens
            else 0.0
        )

    @property
    def kv_cache_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks
