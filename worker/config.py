"""How to start a worker: which model, where, and how much KV cache. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class WorkerConfig:
    model_dir: str  # a Meta checkpoint directory or a Hugging Face Llama directory
    device: str = "cpu"  # "cuda" works too
    dtype: str | None = None  # None: float32 on CPU, bfloat16 on CUDA
    block_size: int = 16  # tokens per KV block
    num_kv_blocks: int | None = None  # None: sized from kv_cache_memory
    # Bytes for K and V of all layers. None: a default budget (CPU: at most 1 GiB and no more
    # than 256 full-length sequences need; CUDA: a fraction of the memory free after loading).
    kv_cache_memory: int | None = None
    max_model_len: int | None = None  # None: params.json max_seq_len / HF max_position_embeddings
    seed: int = 0  # seeds the draws of requests that bring no seed of their own
