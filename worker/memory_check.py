"""Running out of memory while loading weights is said as such: what the allocation needed and
what the machine had, never that the file is corrupt."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def available_bytes(meminfo: Path = MEMINFO) -> int | None:
    """MemAvailable of /proc/meminfo, or None where there is none."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def is_allocation_failure(exc: BaseException) -> bool:
    """torch reports a failed CPU allocation as a RuntimeError naming the allocator."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "not enough memory" in text or "DefaultCPUAllocator" in text or "alloc" in text.lower()
    )


@contextmanager
def allocation_guard(what: str, needed: int, error: type[Exception]) -> Iterator[None]:
    """Turn an allocation failure inside the block into `error` saying how much `what`
    needed and how much memory the machine has available."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_allocation_failure(exc):
            raise
        available = available_bytes()
        have = f"{gib(available)} available" if available is not None else "availability unknown"
        raise error(
            f"out of memory: {what} needs {gib(needed)} as float32, {have} "
            f"(--quantization auto keeps a GGUF's quantized blocks packed instead)"
        ) from exc
