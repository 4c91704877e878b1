"""Every Triton kernel variant a step can launch, compiled before the first request.

Triton compiles a kernel the first time it meets a new combination of its compile-time
constants (tile shape, split count, dtype, ...) and of the properties it specialises on
(an integer equal to 1 or a multiple of 16, a pointer's alignment), 1-3 s each on an H100: a
request that brought a new prefill width or batch size would wait for it. At start the worker
runs the model once per variant instead, on steps that write nowhere in the KV cache:

- a prefill chunk of 2, 4, 8, ... tokens, one per tile shape `launch_shape` can give;
- a decode-only step for each split count a step can use (the CUDA graphs, captured after
  this, compile their own shapes while they capture);
- with LoRA slots (the Triton adapter path), the shrink and expand kernels of each
  projection at both tile heights, every row on the base model (they exit at once).

The kernels take every size that changes from step to step as a grid size or an unspecialised
argument, so nothing else varies (tests/worker/test_kernel_warmup.py checks the variants a
random workload meets against these).
"""

from __future__ import annotations

import logging
import time

import torch

from worker.attention import AttentionMetadata
from worker.attention.triton_backend import TritonAttentionBackend, launch_shape
from worker.kv_cache import KVCache
from worker.lora_slots import LoraSlots
from worker.lora_triton import BLOCK_M_HEIGHTS, TritonLoraStep
from worker.model import Transformer

log = logging.getLogger("loom.worker")


def warm_up_kernels(
    model: Transformer,
    kv_cache: KVCache,
    backend: TritonAttentionBackend,
    lora_slots: LoraSlots | None = None,
) -> int:
    """Run the model once per kernel variant a step can hit; returns how many runs."""
    started = time.monotonic()
    args = model.args
    dtype = model.norm.weight.dtype
    shapes = {launch_shape(1, args.n_heads // args.n_kv_heads, args.head_dim, dtype)}
    runs = 0
    query_len = 2
    while query_len <= args.max_seq_len:  # each prefill tile shape (1: the decodes, below)
        shape = launch_shape(query_len, args.n_heads // args.n_kv_heads, args.head_dim, dtype)
        if shape not in shapes:
            shapes.add(shape)
            _run(model, kv_cache, backend, query_len, 1)
            runs += 1
        query_len *= 2
    forced = backend.num_splits
    try:
        for splits in backend.reachable_splits(args.n_kv_heads, args.max_seq_len):
            backend.num_splits = splits
            _run(model, kv_cache, backend, 1, 1)
            runs += 1
    finally:
        backend.num_splits = forced
    if lora_slots is not None:
        runs += _warm_up_lora(lora_slots, model.norm.weight.dtype, kv_cache.storage.device)
    log.info("Triton kernels warmed up: %d variants in %.1f s", runs,
             time.monotonic() - started)  # fmt: skip
    return runs


def _run(
    model: Transformer, kv_cache: KVCache, backend: TritonAttentionBackend, query_len: int,
    num_seqs: int,
) -> None:  # fmt: skip
    """One step of `num_seqs` sequences of `query_len` new tokens each, no cached prefix;
    every token's slot is -1, so its K/V are written nowhere and the cache stays as it was."""
    device = kv_cache.storage.device
    num_tokens = query_len * num_seqs
    starts = list(range(0, num_tokens + 1, query_len))
    blocks = -(-query_len // kv_cache.block_size)

    def ints(values: list[int], dtype: torch.dtype = torch.int32) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device)

    meta = AttentionMetadata(
        slot_mapping=torch.full((num_tokens,), -1, dtype=torch.int64, device=device),
        num_decodes=num_seqs if query_len == 1 else 0,
        query_start_loc=ints(starts),
        seq_lens=ints([query_len] * num_seqs),
        block_tables=torch.zeros((num_seqs, blocks), dtype=torch.int32, device=device),
        max_query_len=query_len,
        max_seq_len=query_len,
        query_start_loc_host=starts,
        seq_lens_host=[query_len] * num_seqs,
        backend=backend,
    )
    backend.prepare(meta)
    positions = torch.arange(query_len, device=device).repeat(num_seqs)
    input_ids = torch.zeros(num_tokens, dtype=torch.int64, device=device)
    with torch.inference_mode():
        hidden = model(input_ids, positions, kv_cache.layers, meta)
        model.compute_logits(hidden, None)


def _warm_up_lora(slots: LoraSlots, dtype: torch.dtype, device: torch.device) -> int:
    """Each projection's adapter kernels at each tile height (every layer has the same
    shapes, and the row count is no compile-time constant)."""
    for num_tokens in BLOCK_M_HEIGHTS:
        rows = torch.full((num_tokens,), -1, dtype=torch.int64, device=device)
        step = TritonLoraStep(slots, rows)
        for name, projection in slots.layers[0].items():
            x = torch.zeros((num_tokens, projection.a.shape[-1]), dtype=dtype, device=device)
            out = torch.zeros((num_tokens, projection.b.shape[1]), dtype=dtype, device=device)
            step.add(out, x, 0, name)
    return len(BLOCK_M_HEIGHTS)
