"""Loom's engine: everything but tensors. Requests, the block pool and prefix cache, the
scheduler, the engine loop and the offline API (Engine.generate). Imports no torch and no grpc;
the in-process worker is loaded only by `Engine.from_model_dir`. Names are imported on first
use, so `import scheduler.request` stays light (no tokenizer).

- config.py            SchedulerConfig, EngineConfig (model, cache, scheduler, parallel) and
                       EngineStats
- request.py           Request state, status and finish reasons; validate_prompt (the vocabulary)
- request_factory.py   a caller's prompt and settings tokenized and validated into a Request
- errors.py            CapacityError (RESOURCE_EXHAUSTED), DuplicateRequestError (ALREADY_EXISTS),
                       LoraNotFoundError (NOT_FOUND)
- lora_registry.py     the LoRA adapters served, by name (--lora, load and unload at run time)
- block_pool.py        KV blocks: ref counts, LRU free queue, prefix hashes salted per tenant
                       (and per LoRA adapter)
- kv_cache_manager.py  block tables over the pool, allocation on demand, prefix-cache hits
- queue_policy.py      who waits next (fcfs, priority, fair: VTC, deadline: VTC then least
                       slack) and who loses a preemption
- tenant_usage.py      each tenant's tokens served, its VTC counter and weight, its seats,
                       preemptions and deadlines met and missed
- scheduler.py         one step: token budget, chunked prefill, decodes first, preemption by
                       recompute; `update`, the one place request state advances
- preemption.py        preemption for share and priority: the victims that make room for the
                       waiting request next in line, each after its quantum
- deadlines.py         the time a request still needs at the measured step time, and when it
                       can no longer finish by its deadline
- speculation.py     speculative decoding: who speculates, proposals, a verified step applied
- ngram_proposer.py  prompt lookup: what followed the last n tokens earlier in the sequence
- step_results.py      a step's sampled tokens, logprobs and prompt logprobs applied to a request
- stop.py              check_stop, which decides the natural finishes, and who decides the others
- grammars.py          structured output compiled (llguidance) once per constraint, cached, limited
- grammar_tokenizer.py the model's vocabulary as the grammar library reads it
- token_masks.py       each step's allowed tokens from the matchers; matchers advanced in update
- step_failures.py     failed engine steps in a row, and when they stop the loop
- detokenizer.py       incremental text: whole characters only, across tokens
- output_processor.py  text deltas, stop-string scans, usage
- outputs.py           RequestDelta (streamed), RequestOutput (finished), Usage
- fanout.py            n sequences of one request: forked over the prefix cache, seeds per sequence
- engine.py            the loop (add_request, abort, step) and the offline API (Engine.generate)
- engine_stats.py      Engine.stats(): running, waiting, blocks, per tenant
- gc_tuning.py         the collector in a serving process (frozen start-up, rare full collections)
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
    "LoraNotFoundError": "scheduler.errors",
    "RequestDelta": "scheduler.outputs",
    "RequestOutput": "scheduler.outputs",
    "RequestOutputBuilder": "scheduler.outputs",
    "SequenceOutput": "scheduler.outputs",
    "Usage": "scheduler.outputs",
    "MAX_STOP_STRINGS": "contract.sampling",
    "MAX_STOP_STRING_LENGTH": "contract.sampling",
    "MAX_TOP_LOGPROBS": "contract.sampling",
    "Request": "scheduler.request",
    "RequestStatus": "scheduler.request",
    "SamplingParams": "contract.sampling",
    "Scheduler": "scheduler.scheduler",
    "Tokenizer": "modelfiles.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scheduler' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
