"""The worker's settings: which model, where, and how much KV cache. Imports no torch.

Each field is declared once, with its command-line help in `metadata` (common/settings.py):
`python -m frontend serve` builds its flags from these dataclasses (see frontend/cli.py), and
the offline API takes the same names as keywords (`Engine.from_model_dir(dir, num_kv_blocks=256)`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.checks import InvalidFieldError, integer, number, one_of
from common.settings import LOG_LEVELS, check_settings, parse_bytes, setting
from modelfiles.lora_files import parse_lora_spec

BUNDLED_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "stories260K")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")
ATTENTION_BACKENDS = ("auto", "torch", "cpu", "triton")
# `--quantization` (worker/packed_weights.py: LOAD_TIME_TYPES names what the last three make).
QUANTIZATIONS = ("auto", "none", "q8_0", "q4_0", "bf16")
# What packed weights multiply; a name's index is its code in the kernels (worker/csrc/
# quant_blocks.h, `Activations`).
ACTIVATIONS = ("float", "int8", "int16")


@dataclass(slots=True, frozen=True)
class ModelConfig:
    model: str = setting(
        BUNDLED_MODEL,
        "Meta or Hugging Face Llama directory, a .gguf file (or a directory holding one), "
        "or smollm2",
        metavar="MODEL",
    )
    device: str = setting("auto", "cpu, cuda, cuda:N; auto: cuda when torch sees a GPU, else cpu")
    dtype: str | None = setting(
        None, "weights and KV cache (default: float32 on CPU, bfloat16 on CUDA)", choices=DTYPES
    )
    quantization: str = setting(
        "auto",
        "weights on the CPU: auto keeps a GGUF's quantized blocks (Q8_0, Q4_0, Q4_1, Q4_K, "
        "Q5_K, Q6_K) packed and multiplies by them; none dequantizes every tensor to --dtype "
        "(the reference path); q8_0 or q4_0 quantize a float checkpoint's matrices at load; "
        "bf16 rounds them to bfloat16 (half the bytes per decode step, float32 arithmetic)",
        one_of(QUANTIZATIONS),
        choices=QUANTIZATIONS,
    )
    activations: str = setting(
        "int16",
        "what packed weights multiply on the CPU: int16, rows quantized per 32 values for "
        "integer dot products (logprobs within about 0.004 of the dequantized model's); float, "
        "float32 rows (the dequantized model's results to float32 rounding, about 1.5x the "
        "time of a decode step); int8, rows quantized to 8 bits as llama.cpp does (answers "
        "can flip where the two likeliest tokens are near a tie)",
        one_of(ACTIVATIONS),
        choices=ACTIVATIONS,
    )
    max_model_len: int | None = setting(
        None, "longest prompt + output (default: the model's)", integer(2, optional=True)
    )
    seed: int = setting(
        0, "seeds the draws of requests that bring no seed of their own", integer(0)
    )
    num_threads: int | None = setting(
        None,
        "torch CPU threads (serve's default: the cores this process may use, a cgroup CPU "
        "quota included; the offline API's: torch's own)",
        integer(1, optional=True),
    )
    attention_backend: str = setting(
        "auto",
        "paged attention: torch (the reference), cpu (C++ kernel), triton (CUDA kernel), "
        "auto (the fastest here: cpu on the CPU, triton on CUDA)",
        one_of(ATTENTION_BACKENDS),
        choices=ATTENTION_BACKENDS,
    )
    enforce_eager: bool = setting(
        False, "no CUDA graphs: decode steps run eagerly too (graphs need the triton backend)"
    )

    def __post_init__(self) -> None:
        check_settings(self)
        object.__setattr__(self, "model", str(self.model))
        if not isinstance(self.device, str) or not DEVICES.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        object.__setattr__(self, "dtype", DTYPE_ALIASES.get(self.dtype, self.dtype))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")


@dataclass(slots=True, frozen=True)
class CacheConfig:
    block_size: int = setting(16, "tokens per KV cache block", integer(1))
    num_kv_blocks: int | None = setting(
        None, "KV cache size in blocks (default: sized by budget)", integer(1, optional=True)
    )
    kv_cache_memory: int | None = setting(
        None,
        "KV cache size in bytes, e.g. 2GiB (default: CPU at most 1 GiB, CUDA 80%% of free memory)",
        integer(1, optional=True),
        type=parse_bytes,
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.num_kv_blocks is not None and self.kv_cache_memory is not None:
            raise ValueError("set at most one of num_kv_blocks and kv_cache_memory")


@dataclass(slots=True, frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = setting(
        1, "split the model over this many GPUs (CPU: processes), Megatron-style", integer(1)
    )
    distributed_timeout: float = setting(
        60.0,
        "seconds a tensor-parallel rank may keep the others waiting before the step fails",
        number(0, low_open=True),
    )

    def __post_init__(self) -> None:
        check_settings(self)


def _lora_specs(name: str, value: Any) -> tuple[str, ...]:
    """--lora NAME=PATH, repeatable: kept as the "NAME=PATH" strings (each checked)."""
    specs = tuple(value or ())
    names = [parse_lora_spec(spec)[0] if isinstance(spec, str) else None for spec in specs]
    if None in names:
        raise InvalidFieldError(name, f"{name} takes NAME=PATH strings, got {value!r}")
    if len(set(names)) != len(names):
        raise InvalidFieldError(name, f"{name} names an adapter twice: {', '.join(names)}")
    return specs


# Settings in the worker's dataclasses that the engine alone reads (the adapters it lists).
ENGINE_SIDE_SETTINGS = frozenset({"lora"})


@dataclass(slots=True, frozen=True)
class LoraConfig:
    """LoRA adapters over the base model: the worker holds at most max_loras of them (least
    recently used first out), the scheduler runs at most max_loras distinct ones per step."""

    lora: tuple[str, ...] = setting(
        (),
        "serve a LoRA adapter (a PEFT directory) as NAME; repeatable",
        _lora_specs,
        action="append",
        metavar="NAME=PATH",
        type=str,
    )
    max_loras: int = setting(
        4, "LoRA adapters resident at once, and distinct adapters in one step", integer(1)
    )
    max_lora_rank: int = setting(
        64, "largest LoRA rank an adapter may have", integer(1, 1024)
    )

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True, frozen=True)
class WorkerConfig:
    """What `create_worker` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # The scheduler's max_num_seqs, the largest decode batch (the top of the CUDA graph
    # ladder); None where the worker runs without a scheduler config (the ladder goes to 256).
    max_num_seqs: int | None = None
    # Speculative decoding's draft model (SchedulerConfig.draft_model; worker/draft_model.py),
    # loaded beside the model with a KV cache of its own; None: no draft.
    draft_model: str | None = None

    def __post_init__(self) -> None:
        integer(1, optional=True)("max_num_seqs", self.max_num_seqs)
        if self.draft_model is not None and self.parallel.tensor_parallel_size > 1:
            raise ValueError(
                "a draft model (--speculative draft) needs a worker without tensor "
                "parallelism; use --speculative ngram, or tensor_parallel_size 1"
            )


@dataclass(slots=True, frozen=True)
class WorkerServerConfig:
    """The worker server's own settings (`python -m worker serve`)."""

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = setting(50061, "gRPC port (0: any free port)", integer(0))
    session_timeout: float = setting(
        10.0,
        "seconds a silent scheduler keeps the worker before another may connect",
        number(0, low_open=True),
    )
    log_level: str = setting("info", "logging level", one_of(LOG_LEVELS), choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        check_settings(self)


@dataclass(slots=True, frozen=True)
class WorkerServeConfig:
    """Everything `python -m worker serve` takes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    server: WorkerServerConfig = field(default_factory=WorkerServerConfig)

    @property
    def worker(self) -> WorkerConfig:
        return WorkerConfig(
            model=self.model, cache=self.cache, parallel=self.parallel, lora=self.lora
        )

