"""Loom's C++ CPU kernels: built on first use for this machine's CPU, then cached.

worker/csrc/*.cpp compile into one library with torch.utils.cpp_extension (gcc or clang and
ninja), cached under TORCH_EXTENSIONS_DIR (by default ~/.cache/torch_extensions) under a name
keyed by the sources, headers and the CPU's features, so a later start loads it in milliseconds. It
registers `torch.ops.loom.*`. Where it cannot be built (no compiler), `load_cpu_kernels()`
says why in a warning and returns False, and the callers use plain torch instead.
"""

from __future__ import annotations

import fcntl
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
    """What a build depends on: every source and header, the CPU, and the torch it is built
    against (its version and where it is installed: each virtualenv gets its own build)."""
    import torch

    digest = hashlib.sha256()
    for path in sorted(CSRC.iterdir()):
        digest.update(path.name.encode() + path.read_bytes())
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    flags = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "")
    digest.update(flags.encode())
    digest.update(f"{torch.__version__} {Path(torch.__file__).parent}".encode())
    return digest.hexdigest()[:12]


def _build_and_load() -> bool:
    import torch
    from torch.utils import cpp_extension

    name = f"loom_cpu_kernels_{_build_key()}"
    build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    library = build_dir / f"{name}.so"
    started = time.monotonic()
    try:
        # One process builds while the others wait; an flock dies with its process, so a
        # build killed half way leaves no lock behind (torch's own lock file would stay, and
        # make every later load wait forever: one found while holding ours is stale).
        with open(build_dir / "loom.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if library.exists():  # the key names everything the build depends on
                torch.ops.load_library(str(library))
            else:
                log.info("building the CPU kernels (once; cached in %s)", build_dir)
                (build_dir / "lock").unlink(missing_ok=True)
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
    log.info("CPU kernels ready in %.2f s", time.monotonic() - started)
    return True
