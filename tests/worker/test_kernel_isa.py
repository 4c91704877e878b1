"""The packed-weight kernels' other ISA paths, which this machine's -march=native build does
not take: kernel_isa_check.cpp is built for AVX2 (x86-64-v3: AVX2, FMA, F16C, no AVX-512 or
VNNI, as on a Zen 3) and for plain x86-64 (no AVX at all), run here, and must report every
case within the float32 summation bound of the exact products."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
from torch.utils import cpp_extension

CSRC = Path(__file__).resolve().parents[2] / "worker" / "csrc"
CHECK = Path(__file__).resolve().parent / "kernel_isa_check.cpp"

pytestmark = [
    pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler here"),
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86-64 ISA variants"),
    pytest.mark.slow,
]


@pytest.mark.parametrize(("march", "isa"), [("x86-64-v3", "avx2"), ("x86-64", "plain")])
def test_the_kernels_give_exact_products_on_another_isa(tmp_path, march: str, isa: str) -> None:
    binary = tmp_path / "check"
    includes = [f"-I{p}" for p in (CSRC, *cpp_extension.include_paths())]
    build = subprocess.run(
        ["g++", "-O2", "-std=c++17", f"-march={march}", "-fopenmp", *includes, str(CHECK),
         "-o", str(binary)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=120)
    assert run.stdout.splitlines()[0] == f"isa {isa}"
    assert run.returncode == 0, run.stdout[-2000:]
    assert "checked 147 cases: ok" in run.stdout
