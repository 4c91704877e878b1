"""A `python -m frontend serve` process for tests, its stderr collected as it runs."""

from __future__ import annotations

import os
import re
import subprocess
import threading

from tests.conftest import REPO_ROOT

LISTENING = re.compile(r"listening on (\S+):(\d+)")
METRICS = re.compile(r"metrics on http://(\S+):(\d+)/metrics")


class ServeProcess:
    """Starts `argv` in the repo root (`env` added to the environment) and waits for its
    "listening on" line.

    `target` is where a client on this machine reaches it (a 0.0.0.0 listener is reached
    on 127.0.0.1); `metrics_port` is set when the server logged one.
    """

    def __init__(
        self, argv: list[str], startup_timeout: float = 60.0, env: dict[str, str] | None = None
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.target = ""
        self.metrics_port: int | None = None
        listening = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:  # until the process closes it
                self.lines.append(line)
                if match := METRICS.search(line):
                    self.metrics_port = int(match.group(2))
                if match := LISTENING.search(line):
                    host = "127.0.0.1" if match.group(1) == "0.0.0.0" else match.group(1)
                    self.target = f"{host}:{match.group(2)}"
                    listening.set()
            listening.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        listening.wait(startup_timeout)
        if not self.target:
            self.stop()
            raise AssertionError(f"serve did not start:\n{self.log()}")

    def log(self) -> str:
        """Everything it wrote; complete once the process has exited."""
        if self.proc.poll() is not None:
            self._reader.join(10)
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
