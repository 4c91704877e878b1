"""The serving process counts the cores it may use: affinity, and a cgroup CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

from common.threads import available_cpus


def test_unlimited_cgroup_leaves_the_affinity(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v2_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a core: one thread
    assert available_cpus(tmp_path) == 1


def test_cgroup_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_no_cgroup_files_leave_the_affinity(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))
