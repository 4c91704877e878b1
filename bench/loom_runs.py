"""Running Loom's engine offline for the benchmarks, and recording the steps it ran."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.workload import Workload
from contract.step import StepInput, StepOutput, Worker, WorkerInfo
from modelfiles.tokenizer import Tokenizer
from scheduler import Engine, SamplingParams
from scheduler.engine import EngineConfig
from worker import create_worker


@dataclass
class RecordingWorker:
    """Passes every step to the real worker and keeps a copy of it, with the time the worker
    took, so the same step shapes can be replayed without the engine around them."""

    inner: Worker
    steps: list[StepInput] = field(default_factory=list)
    execute_seconds: float = 0.0

    def info(self) -> WorkerInfo:
        return self.inner.info()

    def execute(self, step: StepInput) -> StepOutput:
        # A copy: the scheduler may reuse lists it handed over.
        self.steps.append(copy.deepcopy(step))
        start = time.perf_counter()
        out = self.inner.execute(step)
        self.execute_seconds += time.perf_counter() - start
        return out


def build_engine(
    model_dir: Path, device: str, record: bool = False, **settings: object
) -> tuple[Engine, RecordingWorker | None]:
    """An engine over the in-process worker (wrapped in a RecordingWorker when `record`).
    `settings`: EngineConfig fields by name, as `Engine.from_model_dir` takes them."""
    config = EngineConfig.from_kwargs(model=str(model_dir), device=device, **settings)
    worker: Worker = create_worker(config.worker)
    recorder = RecordingWorker(worker) if record else None
    engine = Engine(recorder or worker, Tokenizer.from_model_dir(model_dir), config)
    return engine, recorder


def greedy_params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def warm_up(engine: Engine) -> None:
    """One short request first, so one-time costs (allocations, kernel selection) are not
    timed."""
    engine.generate([[5, 6, 7, 8]], greedy_params(4))


def run_workload(engine: Engine, workload: Workload) -> tuple[float, list[list[int]]]:
    """Wall seconds to run the whole workload, and each request's output token ids."""
    params = [greedy_params(n) for n in workload.max_tokens]
    start = time.perf_counter()
    outputs = engine.generate(workload.prompts, params)
    wall = time.perf_counter() - start
    token_ids = [out.token_ids for out in outputs]
    for out, n in zip(token_ids, workload.max_tokens, strict=True):
        if len(out) != n:
            raise RuntimeError(f"a request asked for {n} tokens and got {len(out)}")
    return wall, token_ids
