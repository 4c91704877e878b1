"""Engines over the real stories260K worker, shared by the model-backed scheduler tests."""

from __future__ import annotations

import random
from pathlib import Path

from contract.step import Worker
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
