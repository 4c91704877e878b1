"""A one-line progress bar on stderr, with no dependency."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redraws in place on a terminal; elsewhere (a log file, CI) prints a line every tenth
    of the way so logs stay short."""

    def __init__(self, total: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.num_ok = 0
        self.num_failed = 0
        self._start = time.perf_counter()
        self._interactive = self.stream.isatty()
        self._last_tenth = -1

    @property
    def num_done(self) -> int:
        return self.num_ok + self.num_failed

    def update(self, ok: bool) -> None:
        if ok:
            self.num_ok += 1
        else:
            self.num_failed += 1
        if not self.enabled:
            return
        tenth = self.num_done * 10 // self.total
        if self._interactive:
            self.stream.write("\r" + self.render())
        elif tenth != self._last_tenth:
            self.stream.write(self.render() + "\n")
        self._last_tenth = tenth
        self.stream.flush()

    def render(self, width: int = 30) -> str:
        filled = self.num_done * width // self.total if self.total else width
        elapsed = time.perf_counter() - self._start
        return (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.num_done}/{self.total} "
            f"ok {self.num_ok} failed {self.num_failed} {elapsed:.1f}s"
        )

    def close(self) -> None:
        if self.enabled and self._interactive:
            self.stream.write("\n")
            self.stream.flush()
