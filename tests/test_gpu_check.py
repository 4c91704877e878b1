"""The device check fails on a wrong kernel: `bench/gpu_check.sh --quick` run on this CPU (the
kernels under Triton's interpreter) with a fault planted in the attention kernel's output, split
or not (a wrong kernel in the LoRA kernels' rows too), exits 1, says which rows missed, and
skips the measurements. CI runs the clean check
(.ci/run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

# A Loom process (the check) running seconds of interpreted kernels and model steps.
pytestmark = [pytest.mark.server, pytest.mark.slow]


def run_check(out_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the check sets it
    env.update(PYTHON=sys.executable, OUT=str(out_dir))
    done = subprocess.run(
        ["bench/gpu_check.sh", "--quick", *args],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done, json.loads((out_dir / "gpu_check.json").read_text())


def rows_by_check(results: dict) -> dict[str, tuple[str, str, str]]:
    return {check: (result, goal, verdict) for check, result, goal, verdict in results["table"]}


@pytest.mark.parametrize("plant", ["nan", "wrong-kernel"])
def test_a_planted_kernel_fault_fails_the_check(plant: str, tmp_path: Path) -> None:
    done, results = run_check(tmp_path, "--plant", plant)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"PLANTED FAULT in the kernel part: {plant}" in done.stdout
    rows = rows_by_check(results)
    kernel = {check: row for check, row in rows.items() if check.startswith("kernel vs reference")}
    float32 = next(row for check, row in kernel.items() if ", float32" in check)
    assert float32[2] == "MISS"
    if plant == "nan":
        assert "rel err nan" in float32[0]  # NaN is the worst error, not 0
    else:
        error = float(float32[0].split()[2])
        assert error > 1e-2  # far past the 1e-5 goal: the rows were shifted by one token
    # Split-KV launches carry the same fault, and miss too.
    split = [row for check, row in rows.items() if check.startswith("split-KV vs reference")]
    assert [verdict for _, _, verdict in split] == ["MISS", "MISS"]
    if plant == "nan":
        assert all("rel err nan" in result for result, _, _ in split)
    # The rest of the check ran and passed: only the planted fault failed it.
    assert rows["bundled model greedy text, float32: triton vs torch"][2] == "ok"
    assert rows["fused kernels vs torch, float32"][2] == "ok"
    # The LoRA kernels: each row given its neighbour's adapter misses (the NaN is attention's).
    lora = [row for check, row in rows.items() if check.startswith("LoRA kernels vs torch")]
    expected = ["MISS", "MISS"] if plant == "wrong-kernel" else ["ok", "ok"]
    assert [verdict for _, _, verdict in lora] == expected
    # Both kernel rows and both split-KV rows (and both LoRA rows for a wrong kernel).
    assert results["failures"] == (6 if plant == "wrong-kernel" else 4)
    assert rows["measurements"][2].startswith("SKIPPED: verification failed")
    assert not any(check.startswith("batch-1 decode step") for check in rows)
