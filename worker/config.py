"""The worker's settings: which model, where, and how much KV cache. Imports no torch.

Each field is declared once, with its command-line help in `metadata`: `python -m scheduler
serve` builds its flags from these dataclasses (see frontend/cli.py), and the offline API
takes the same names as keywords (`Engine.from_model_dir(dir, num_kv_blocks=256)`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUNDLED_MODEL = str(Path(__file__).resolve().parent.parent / "models" / "stories260K")
DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")
ATTENTION_BACKENDS = ("auto", "torch", "cpu")


def setting(default: Any, help: str, **flag: Any) -> Any:
    """A settings field: its default, and what the command line needs to offer it (help, and
    optionally `type`, `choices`, `metavar`)."""
    return field(default=default, metadata={"help": help, **flag})


def parse_bytes(text: str) -> int:
    """`1073741824`, `512MiB`, `2G`, `1.5GB` -> bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size in bytes: {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


def check_at_least(owner: object, name: str, low: int, optional: bool = False) -> None:
    value = getattr(owner, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")


@dataclass(slots=True, frozen=True)
class ModelConfig:
    model: str = setting(BUNDLED_MODEL, "Meta or Hugging Face Llama model directory", metavar="DIR")
    device: str = setting("auto", "cpu, cuda, cuda:N; auto: cuda when torch sees a GPU, else cpu")
    dtype: str | None = setting(
        None, "weights and KV cache (default: float32 on CPU, bfloat16 on CUDA)", choices=DTYPES
    )
    max_model_len: int | None = setting(None, "longest prompt + output (default: the model's)")
    seed: int = setting(0, "seeds the draws of requests that bring no seed of their own")
    attention_backend: str = setting(
        "auto",
        "paged attention: torch (the reference), cpu (C++ kernel), auto (the fastest here)",
        choices=ATTENTION_BACKENDS,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", str(self.model))
        if not isinstance(self.device, str) or not DEVICES.fullmatch(self.device):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        object.__setattr__(self, "dtype", DTYPE_ALIASES.get(self.dtype, self.dtype))
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_at_least(self, "max_model_len", 2, optional=True)
        check_at_least(self, "seed", 0)
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)}, "
                f"got {self.attention_backend!r}"
            )


@dataclass(slots=True, frozen=True)
class CacheConfig:
    block_size: int = setting(16, "tokens per KV cache block")
    num_kv_blocks: int | None = setting(None, "KV cache size in blocks (default: sized by budget)")
    kv_cache_memory: int | None = setting(
        None,
        "KV cache size in bytes, e.g. 2GiB (default: CPU at most 1 GiB, CUDA 80%% of free memory)",
        type=parse_bytes,
    )
    enable_prefix_caching: bool = setting(True, "reuse KV blocks of identical prompt prefixes")

    def __post_init__(self) -> None:
        check_at_least(self, "block_size", 1)
        check_at_least(self, "num_kv_blocks", 1, optional=True)
        check_at_least(self, "kv_cache_memory", 1, optional=True)
        if self.num_kv_blocks is not None and self.kv_cache_memory is not None:
            raise ValueError("set at most one of num_kv_blocks and kv_cache_memory")


@dataclass(slots=True, frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = setting(
        1, "split the model over this many GPUs (CPU: processes), Megatron-style"
    )
    distributed_timeout: float = setting(
        60.0, "seconds a tensor-parallel rank may keep the others waiting before the step fails"
    )

    def __post_init__(self) -> None:
        check_at_least(self, "tensor_parallel_size", 1)
        timeout = self.distributed_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"distributed_timeout must be a number > 0, got {timeout!r}")


@dataclass(slots=True, frozen=True)
class WorkerConfig:
    """What `create_worker` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)


LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(slots=True, frozen=True)
class WorkerServerConfig:
    """The worker server's own settings (`python -m worker serve`)."""

    host: str = setting("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = setting(50061, "gRPC port (0: any free port)")
    session_timeout: float = setting(
        10.0, "seconds a silent scheduler keeps the worker before another may connect"
    )
    log_level: str = setting("info", "logging level", choices=LOG_LEVELS)

    def __post_init__(self) -> None:
        check_at_least(self, "port", 0)
        if not self.session_timeout > 0:
            raise ValueError(f"session_timeout must be > 0, got {self.session_timeout}")


@dataclass(slots=True, frozen=True)
class WorkerServeConfig:
    """Everything `python -m worker serve` takes."""

    model: ModelConfig = field(default_factory=ModelConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    server: WorkerServerConfig = field(default_factory=WorkerServerConfig)

    @property
    def worker(self) -> WorkerConfig:
        return WorkerConfig(model=self.model, cache=self.cache, parallel=self.parallel)


# Leaves of WorkerServeConfig that are the scheduler's business: `worker serve` has no flag
# for them.
SCHEDULER_ONLY_SETTINGS = frozenset({"enable_prefix_caching"})


def leaf_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """Every setting of a nested settings dataclass, by name -> path of field names, e.g.
    {"block_size": ("cache", "block_size"), ...}. Names are unique across the tree."""
    found: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            for name, path in leaf_fields(sub).items():
                if name in found:
                    raise TypeError(f"setting {name!r} is declared twice in {cls.__name__}")
                found[name] = (f.name, *path)
        else:
            found[f.name] = (f.name,)
    return found


def from_flat(cls: type, **settings: Any) -> Any:
    """Build a nested settings dataclass from flat keywords (`num_kv_blocks=256`, ...), the
    others at their defaults. An unknown keyword is a TypeError naming it."""
    paths = leaf_fields(cls)
    unknown = sorted(set(settings) - set(paths))
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(unknown)}")
    tree: dict[str, Any] = {}
    for name, value in settings.items():
        node = tree
        *parents, leaf = paths[name]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _build(cls, tree)


def _build(cls: type, tree: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        value = tree[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        kwargs[f.name] = _build(sub, value) if isinstance(value, dict) and sub else value
    return cls(**kwargs)
