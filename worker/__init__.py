"""The worker: weights, KV cache, forward pass and sampling behind the step contract
(contract/step.py). Importing this package (or worker.config) does not import torch; the runner
is imported only when a worker is created.

- config.py          ModelConfig, CacheConfig, ParallelConfig, WorkerConfig, the server's settings
- cli.py, __main__.py  `python -m worker serve` (rank 0 serves, launched ranks follow)
- server.py          the worker server: Info, Connect, Step, Health, Disconnect; sessions
- runner.py          the in-process worker: per-request state, forward, sample
- step_check.py      whether a step fits the worker's state, before any of it applies
- step_batch.py      scheduled requests -> flat input ids, positions, slot mapping, metadata
- model.py           Llama over one flat batch of tokens, Meta's parameter names; wq/wk/wv and
                     w1/w3 fused into wqkv and w13 at load (in memory only)
- lora_weights.py    a checked LoRA adapter's tensors laid out for the model's (fused) projections
- lora_batch.py      the resident adapters (LRU, --max-loras) and one step's per-adapter runs
- lora_slots.py, lora_triton.py, lora_kernels.py  the adapters stacked in fixed slots and
                     the Triton shrink/expand kernels over per-row slots (CUDA's adapter path)
- model_args.py      hyper-parameters from Meta's params.json, HF's config.json, a GGUF header
- loader.py, hf_layout.py, torch_file_probe.py  Meta (sharded) and HF checkpoints, clear errors
- random_model.py    random-weight Llamas of any shape (the benchmarks', the tests', the device
                     check's 7B drawn on the GPU); hf_layout.py writes one in HF's layout too
- gguf_loader.py, gguf_dequant.py  GGUF tensors under Meta's names, quantized blocks packed
                     (memory-mapped; Q4_0/Q4_1 regrouped) or dequantized to the reference values
- packed_weights.py  quantized blocks kept packed (Q4_0/Q4_1 regrouped by eights for the
                     kernels), --quantization, quantizing at load
- packed_modules.py  the model's Linear and Embedding over packed blocks (the CPU kernels)
- decode_step.py     a CPU decode step of the whole model in one C++ call
- memory_check.py    running out of memory while loading said as such, with sizes
- weight_layout.py   on the CPU in float32, projection weights held column-major
- host_memory.py     host tensors on memory advised for 2 MiB pages (weights, KV cache)
- attention/         paged attention behind one call: torch reference, C++ CPU kernel, Triton
                     (split-KV decode where the grid would leave SMs idle)
- fused_ops.py, fused_kernels.py  Triton passes around the GEMMs where the triton backend runs:
                     residual add + RMSNorm, RoPE + K/V cache write, SiLU * up
- kernel_warmup.py   every Triton kernel variant a step can launch, compiled at start on CUDA
- csrc/              C++ CPU kernels: paged attention, residual add + RMSNorm, SiLU * up,
                     packed-weight products, the fused decode step
- cpu_kernels.py     builds csrc/ once per machine (torch.utils.cpp_extension), cached
- kv_cache.py        K and V per layer, in the layout the backend reads, on huge pages on CPU
- cuda_graphs.py     decode steps captured as CUDA graphs per batch size, replayed with new inputs
- device_io.py       host lists to the device from pinned memory; a step's results in one copy
- sampler.py         greedy, temperature, min-p, top-k, top-p, (seed, position) draws, logprobs
- penalties.py       presence, frequency and repetition penalties and logit biases, batched
- step_sampling.py   one step's sampling and logprobs over the rows of its logits
- step_output.py     sampled tokens and logprobs -> StepOutput
- token_masks.py     structured output's packed allowed-token bits applied to the logits rows
- speculative.py     proposed tokens scored in the step's forward pass, verified, forgotten
- draft_model.py     speculative decoding's draft model: its own KV cache on the model's block
                     ids, greedy proposals at the start of a step
- placement.py       what of the model a runner holds: all of it, or a tensor-parallel slice
- parallel.py        the process group from the launcher variables, collectives with timeouts
- tp_model.py        a rank's Llama: column/row-parallel layers, vocabulary-parallel rows
- tp_loader.py, tp_hf_loader.py  a rank's weights: Meta shards one per rank or re-cut, HF at load
- tp_rank.py         rank 0 (the Worker; sends each step, samples) and the ranks that follow
- tp_launch.py       starting the ranks: launched, or rank 0 starts the others
"""

from __future__ import annotations

import logging
from typing import Any

from common.settings import from_flat
from common.stages import log_stage
from contract.step import Worker
from worker.config import CacheConfig, LoraConfig, ModelConfig, ParallelConfig, WorkerConfig

log = logging.getLogger("loom.worker")

def create_worker(config: WorkerConfig | None = None, **settings: Any) -> Worker:
    """Load the model and allocate the KV cache; returns the in-process worker. Takes a
    WorkerConfig, or its fields by name (`create_worker(model=dir, num_kv_blocks=64)`).
    With tensor_parallel_size N > 1 this process is rank 0 of N (worker/tp_launch.py: the
    other ranks are started here unless a launcher started them); `close()` the worker to
    stop them."""
    if config is None:
        config = from_flat(WorkerConfig, **settings)
    elif settings:
        raise TypeError("pass a WorkerConfig or settings by name, not both")
    if config.parallel.tensor_parallel_size > 1:
        from worker.tp_launch import start_tensor_parallel

        return start_tensor_parallel(config)
    with log_stage(log, "importing torch"):  # seconds on a busy machine, before any weight
        from worker.runner import ModelRunner

    return ModelRunner(config)


__all__ = [
    "CacheConfig",
    "LoraConfig",
    "ModelConfig",
    "ParallelConfig",
    "WorkerConfig",
    "create_worker",
]
