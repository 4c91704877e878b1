"""How many threads torch's CPU work should use: the cores this process may really run on.

`os.cpu_count()` (torch's default) counts the machine's cores, not the ones a container or
`taskset` leaves the process: a server limited to 2 cores of a 64-core host that starts 64
OpenMP threads spends its time descheduled. Both limits count here: the CPU affinity mask, and
a cgroup CPU quota (`cpu.max` in cgroup v2, `cpu.cfs_quota_us` in v1).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    """Cores this process may use: its affinity, capped by a cgroup quota if one is set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs the cgroup may use per period, or None when unlimited or unknown."""
    try:
        fields = (root / "cpu.max").read_text().split()  # "max 100000" or "200000 100000"
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
