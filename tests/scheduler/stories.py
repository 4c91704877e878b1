"""Engines over the real stories260K worker, shared by the model-backed scheduler tests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from contract.step import StepInput, StepOutput, Worker, WorkerInfo
from modelfiles.tokenizer import Tokenizer
from scheduler.engine import Engine, EngineConfig
from tests.conftest import STORIES_DIR
from worker import create_worker

_workers: dict[int, Worker] = {}


def stories_worker(num_kv_blocks: int) -> Worker:
    """One loaded worker per cache size, reused across tests (loading costs seconds)."""
    if num_kv_blocks not in _workers:
        _workers[num_kv_blocks] = create_worker(model=str(STORIES_DIR), num_kv_blocks=num_kv_blocks)
    return _workers[num_kv_blocks]


def stories_engine(num_kv_blocks: int = 128, **config: object) -> Engine:
    tokenizer = Tokenizer.from_model_dir(Path(STORIES_DIR))
    return Engine(stories_worker(num_kv_blocks), tokenizer, EngineConfig.from_kwargs(**config))


def random_prompt(rng: random.Random, num_tokens: int) -> list[int]:
    """BOS, then ids drawn from the vocabulary past the control tokens."""
    return [1] + [rng.randrange(3, 512) for _ in range(num_tokens - 1)]


def repeating_prompts(seed: int, num: int = 4) -> list[list[int]]:
    """Prompts that repeat a span of their own (what prompt lookup finds), and random ones."""
    rng = random.Random(seed)
    prompts = []
    for i in range(num):
        if i % 2:
            prompts.append(random_prompt(rng, 20))
        else:
            span = random_prompt(rng, 12)[1:]
            prompts.append([1, *span, *random_prompt(rng, 5)[1:], *span[:6]])
    return prompts


@dataclass
class RecordingWorker:
    """The real worker, with the steps it was given kept for the test to inspect."""

    inner: Worker
    steps: list[StepInput] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.inner.available

    @property
    def session_epoch(self) -> int:
        return self.inner.session_epoch

    def info(self) -> WorkerInfo:
        return self.inner.info()

    def execute(self, step: StepInput) -> StepOutput:
        self.steps.append(step)
        return self.inner.execute(step)

    def close(self) -> None:
        self.inner.close()


def assert_nothing_held(engine: Engine) -> None:
    pool = engine.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks and not any(pool.ref_cnts)
    assert not engine.scheduler.requests and not engine.has_unfinished()
