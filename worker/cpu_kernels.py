"""Loom's C++ CPU kernels: built on first use for this machine's CPU, then cached.

worker/csrc/*.cpp compile into one library with torch.utils.cpp_extension (gcc or clang and
ninja), cached under TORCH_EXTENSIONS_DIR (by default ~/.cache/torch_extensions) under a name
keyed by the sources, headers and the CPU's features, so a later start loads it in milliseconds. It
registers `torch.ops.loom.*`. Where it cannot be built (no compiler), `load_cpu_kernels()`
says why in a warning and returns False, and the callers use plain torch instead.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path

log = logging.getLogger("loom.kernels")

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = sorted(CSRC.glob("*.cpp"))
# Built for this CPU (-march=native), so the cached build is keyed by what the CPU offers.
CFLAGS = [
    "-O3",
    "-march=native",
    "-mprefer-vector-width=512",  # gcc keeps to 256-bit vectors on AVX-512 CPUs otherwise
    "-fopenmp",
    "-fno-math-errno",
    "-fno-trapping-math",
]
# torch runs its intra-op threads on OpenMP: the kernels use the same runtime (the libgomp
# torch already loaded), so both share one pool.
LDFLAGS = ["-fopenmp"]

_lock = threading.Lock()
_loaded: bool | None = None  # None: not tried yet


def load_cpu_kernels() -> bool:
    """Build (once per machine) and load the kernels; False, with a warning saying why, when
    they cannot be built here. Safe to call from several threads."""
    global _loaded
    with _lock:
        if _loaded is None:
            _loaded = _build_and_load()
        return _loaded


def _build_key() -> str:
    """What the build depends on beyond torch: every source and header, and the CPU."""
    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    digest.update(flags.encode())
    return digest.hexdigest()[:12]


def _build_and_load() -> bool:
    from torch.utils import cpp_extension

    name = f"loom_cpu_kernels_{_build_key()}"
    library = Path(cpp_extension._get_build_directory(name, verbose=False)) / f"{name}.so"
    if not library.exists():
        log.info("building the CPU kernels (once; cached in %s)", library.parent)
    started = time.monotonic()
    try:
        cpp_extension.load(
            name=name,
            sources=[str(source) for source in SOURCES],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, a failed build: the callers fall back
        reason = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
        log.warning("cannot build the CPU kernels: %s", reason[0])
        return False
    log.info("CPU kernels ready in %.1f s", time.monotonic() - started)
    return True
