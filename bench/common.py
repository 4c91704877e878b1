"""What every benchmark shares: the machine's description, timing, and BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
DEFAULT_MODEL_DIR = REPO_ROOT / "bench" / "models" / "llama60m"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_description(device: str) -> str:
    """One line for BENCHMARKS.md: what ran the numbers."""
    if device.startswith("cuda") and torch.cuda.is_available():
        accel = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        accel = "no GPU"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()}-core CPU ({cpu_model()}), {mem_gib:.0f} GiB, {accel}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )


class _LoadSampler:
    """Samples the 1-minute load average every few seconds while a benchmark runs: above the
    core count, other processes were sharing the cores with the measurement."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.samples = [os.getloadavg()[0]]
        self._every_s = every_s
        threading.Thread(target=self._run, name="load-sampler", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self._every_s)
            self.samples.append(os.getloadavg()[0])


_LOAD = _LoadSampler()


def load_average() -> str:
    samples = _LOAD.samples
    return (
        f"{samples[0]:.2f} at the start, {max(samples):.2f} at most, {samples[-1]:.2f} at the "
        f"end (1-minute averages on {os.cpu_count()} cores)"
    )


def command_line() -> str:
    module = Path(sys.argv[0]).stem
    return " ".join(["python -m bench." + module, *map(shlex.quote, sys.argv[1:])])


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of `fn()` and its result (CUDA work is waited for)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:,.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_header(device: str) -> str:
    return (
        f"- Command: `{command_line()}`\n"
        f"- Machine: {machine_description(device)}\n"
        f"- Date: {today()}; load: {load_average()}\n"
    )


def described_run(doc: str, device: str) -> str:
    """A section's opening: the module docstring past its usage paragraph, then the run."""
    return f"{doc.split(chr(10) + chr(10), 2)[2].strip()}\n\n{run_header(device)}\n"


def publish(title: str, body: str, write: bool) -> None:
    """Print a section, and with `write` put it into BENCHMARKS.md."""
    print(body)
    if write:
        write_section(title, body)


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the `## title` section of BENCHMARKS.md (or append it), leaving every other
    section as it is. The file is read just before it is written: others edit it too."""
    heading = f"## {title}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
