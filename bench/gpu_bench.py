"""The device check's measurements: copy bandwidth, decode step times, workload throughput
(Loom and Hugging Face transformers' `generate`)."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from bench.common import timed
from bench.gpu_model import TimedWorker
from bench.hf_baseline import hf_generate_batch
from bench.loom_runs import greedy_params, run_workload
from bench.workload import Workload, random_tokens
from scheduler import Engine


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy moves (each byte read once, written once)."""
    seconds = _time_copies(device, nbytes, repeats)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # else the KV cache, sized by free memory, loses these bytes
    return 2 * nbytes * repeats / seconds


def _time_copies(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds, _ = timed(lambda: [dst.copy_(src) for _ in range(repeats)])
    return seconds


def decode_steps(
    engine: Engine, worker: TimedWorker, batch: int, prompt_len: int, num_tokens: int
) -> dict[str, float]:
    """Median wall time of an engine step, and of the worker's part of it, while `batch`
    requests decode together (their prefill steps left out)."""
    rng = np.random.default_rng(batch)
    vocab = engine.info.vocab_size
    for _ in range(batch):
        engine.add_request(random_tokens(rng, vocab, prompt_len), greedy_params(num_tokens))
    engine_ms, worker_ms = [], []
    while engine.has_unfinished():
        num_before = len(worker.steps)
        start = time.perf_counter()
        engine.step()
        seconds = time.perf_counter() - start
        # Steps in which every request computed one token (prefills left out).
        if len(worker.steps) == num_before + 1 and worker.steps[-1][0] == batch:
            engine_ms.append(1e3 * seconds)
            worker_ms.append(1e3 * worker.steps[-1][1])
    return {
        "batch": batch,
        "decode_steps": len(engine_ms),
        "engine_step_ms": statistics.median(engine_ms),
        "worker_step_ms": statistics.median(worker_ms),
    }


def loom_throughput(engine: Engine, worker: TimedWorker, workload: Workload) -> dict:
    replays_before = _replays(worker)
    first_step = len(worker.steps)
    wall, _ = run_workload(engine, workload)
    steps = worker.steps[first_step:]
    return {
        "requests": len(workload.prompts),
        "seconds": round(wall, 2),
        "output_tok_s": workload.num_output_tokens / wall,
        "total_tok_s": (workload.num_prompt_tokens + workload.num_output_tokens) / wall,
        "steps": len(steps),
        "graph_replays": _replays(worker) - replays_before,
        "preemptions": engine.stats().num_preemptions,
    }


def _replays(worker: TimedWorker) -> int:
    graphs = worker.inner.decode_graphs
    return sum(graphs.num_replays.values()) if graphs else 0


def hf_throughput(model, workload: Workload, batch_size: int, budget_s: float) -> dict:
    """Static batches of `batch_size` in arrival order while the budget lasts (a batch is
    started only when the last one says it will fit); the rate is over the batches run."""
    hf_generate_batch(model, [workload.prompts[0][:8]], [2])  # warm-up
    batch_seconds: list[float] = []
    num_requests = 0
    while num_requests < len(workload.prompts):
        spent = sum(batch_seconds)
        if batch_seconds and spent / len(batch_seconds) > budget_s - spent:
            break
        batch = slice(num_requests, num_requests + batch_size)
        wall, _ = timed(
            lambda batch=batch: hf_generate_batch(
                model, workload.prompts[batch], workload.max_tokens[batch]
            )
        )
        batch_seconds.append(wall)
        num_requests = min(num_requests + batch_size, len(workload.prompts))
    done, first = workload.head(num_requests), workload.head(batch_size)
    seconds = sum(batch_seconds)
    return {
        "requests": num_requests,
        "batches": len(batch_seconds),
        "batch_size": batch_size,
        "batch_seconds": [round(s, 2) for s in batch_seconds],
        "seconds": round(seconds, 2),
        "output_tok_s": done.num_output_tokens / seconds,
        "total_tok_s": (done.num_prompt_tokens + done.num_output_tokens) / seconds,
        "first_batch_output_tok_s": first.num_output_tokens / batch_seconds[0],
    }
