"""Replays recorded steps through the model alone: the forward passes Loom ran, without the
scheduler, the sampler or the engine loop around them.

Uses the in-process worker's pieces (its model, KV cache and batch builder), so it measures
exactly the tensors Loom's forward saw: the same token counts, positions, block tables and
cache contents layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.flops import ModelShape
from contract.step import StepInput
from worker.runner import ModelRunner
from worker.step_batch import RequestState, StepBatch


@dataclass(slots=True)
class ReplayStep:
    batch: StepBatch
    num_tokens: int  # tokens computed in the step
    is_decode_only: bool  # every scheduled request computes one token
    flops: int  # matmul FLOPs: layers over the tokens, attention over their context, LM head


def step_flops(shape: ModelShape, scheduled: list[tuple[RequestState, int]], num_rows: int) -> int:
    flops = num_rows * 2 * shape.dim * shape.vocab_size
    for state, n in scheduled:
        first, last = state.num_computed + 1, state.num_computed + n  # contexts seen
        flops += n * shape.linear_flops_per_token()
        flops += shape.attention_flops(1) * (first + last) * n // 2
    return flops


def build_batches(
    runner: ModelRunner, steps: list[StepInput], shape: ModelShape
) -> list[ReplayStep]:
    """Every recorded step as the flat batch its forward ran on (built ahead of timing).
    Running requests take the tokens recorded in the step, so no sampling is needed."""
    states: dict[str, RequestState] = {}
    batches = []
    for step in steps:
        for req_id in step.finished_req_ids:
            states.pop(req_id, None)
        for new in step.new:
            states[new.req_id] = RequestState.from_new(new)
        for running in step.running:
            states[running.req_id].token_ids.extend(running.new_token_ids)
            states[running.req_id].block_ids.extend(running.new_block_ids)
        scheduled = [(states[r], n) for r, n in step.num_scheduled_tokens.items()]
        if not scheduled:
            continue
        batch = runner.build_batch(scheduled)
        batches.append(
            ReplayStep(
                batch=batch,
                num_tokens=sum(n for _, n in scheduled),
                is_decode_only=all(n == 1 for _, n in scheduled),
                flops=step_flops(shape, scheduled, len(batch.logits_rows)),
            )
        )
        for state, n in scheduled:
            state.num_computed += n
    return batches


@torch.inference_mode()
def time_forwards(runner: ModelRunner, steps: list[ReplayStep]) -> list[float]:
    """Seconds of each step's forward pass: the layers over every scheduled token, then the
    LM head on the rows that needed logits."""
    model, layers = runner.model, runner.kv_cache.layers
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    seconds = []
    for step in steps:
        batch = step.batch
        sync()
        start = time.perf_counter()
        hidden = model(batch.input_ids, batch.positions, layers, batch.attn)
        model.compute_logits(hidden, batch.logits_rows)
        sync()
        seconds.append(time.perf_counter() - start)
    return seconds
