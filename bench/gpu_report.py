"""What the device check found: a table printed last, and every figure in a JSON file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, load_average


def results_path() -> Path:
    """$OUT/gpu_check.json when OUT is set (the device machine hands $OUT back), else under
    bench/out/ (ignored by git)."""
    out = os.environ.get("OUT")
    folder = Path(out) if out else REPO_ROOT / "bench" / "out"
    return folder / "gpu_check.json"


class Report:
    """Rows of the final table, and the full results, saved after every part so that a run
    cut short still leaves what it measured."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.rows: list[tuple[str, str, str, str]] = []  # check, result, goal, verdict
        self.results: dict[str, Any] = {}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def note(self, text: str) -> None:
        print(f"[{self.elapsed():6.1f} s] {text}", flush=True)

    def row(self, check: str, result: str, goal: str = "", verdict: str = "") -> None:
        self.rows.append((check, result, goal, verdict))
        self.note(f"{check}: {result}" + (f" ({verdict})" if verdict else ""))

    def skip(self, check: str, why: str) -> None:
        self.row(check, "-", "", f"SKIPPED: {why}")

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            **self.results,
            "table": self.rows,
            "seconds": round(self.elapsed(), 1),
            "load": load_average(),  # the CPU's, during the run
        }
        self.path.write_text(json.dumps(body, indent=2, default=str) + "\n")

    def table(self) -> str:
        header = ("check", "result", "goal", "verdict")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(4)]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                 for row in [header, *self.rows]]  # fmt: skip
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISS"
