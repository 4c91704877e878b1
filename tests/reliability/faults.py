"""Faulty doubles around real workers: nothing here is in production code, and the CLI can
reach none of it.

- `FaultyWorker` wraps any Worker (the embedded runner, or one behind a worker server): armed,
  its next steps raise, or one step stalls until released.
- `NonFiniteRunner` is the real runner whose logits come out NaN or infinite for the requests
  a test names, from their third token on: the worker's own check must catch them.
- `TcpProxy` sits between a remote worker client and its server and can drop every
  connection at once, as a network or a dying host does.
"""

from __future__ import annotations

import contextlib
import math
import socket
import threading
from typing import Any

import torch

from contract.step import StepInput, StepOutput, WorkerInfo
from worker.runner import ModelRunner


class FaultyWorker:
    """Delegates to `inner`; `fail_next(k)` makes the next k steps that compute something
    raise, `stall_next()` makes the next one block until `release()`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.requests = inner.requests  # what a worker server reads (worker/server.py)
        self.num_steps = 0  # steps that computed something
        self._lock = threading.Lock()
        self._fail_left = 0
        self._stall = False
        self._released = threading.Event()
        self.stalled = threading.Event()  # set while a step is held

    # The protocol's state, and what a worker server reads (worker/server.py), are the inner
    # worker's.
    available = property(lambda self: self.inner.available)
    session_epoch = property(lambda self: self.inner.session_epoch)
    failed = property(lambda self: self.inner.failed)
    failure = property(lambda self: self.inner.failure)

    def info(self) -> WorkerInfo:
        return self.inner.info()

    def close(self) -> None:
        self.inner.close()

    def fail_next(self, num_steps: int) -> None:
        with self._lock:
            self._fail_left = num_steps

    def stall_next(self) -> None:
        with self._lock:
            self._stall = True
            self._released.clear()

    def release(self) -> None:
        self._released.set()

    def execute(self, step: StepInput) -> StepOutput:
        if step.num_scheduled_tokens:
            with self._lock:
                self.num_steps += 1
                fail = self._fail_left > 0
                self._fail_left -= fail
                stall, self._stall = self._stall, False
            if fail:
                raise RuntimeError("injected worker fault")
            if stall:
                self.stalled.set()
                self._released.wait(60)
                self.stalled.clear()
        return self.inner.execute(step)


class NonFiniteRunner(ModelRunner):
    """The embedded runner, except that requests whose id contains `marker` get `value`
    (NaN, +inf or -inf) in one logit of their sample row once they have 2 output tokens."""

    marker = "poison"
    value = math.nan

    def sample(self, scheduled: list, batch: Any, logits: torch.Tensor) -> StepOutput:
        rows = [
            plan.sample_row
            for (state, _), plan in zip(scheduled, batch.plans, strict=True)
            if self.marker in state.req_id
            and plan.sample_row is not None
            and len(state.token_ids) - state.num_prompt_tokens >= 2
        ]
        if rows:
            logits = logits.clone()
            logits[rows, 7] = self.value
        return super().sample(scheduled, batch, logits)


class TcpProxy:
    """Forwards 127.0.0.1:port to `upstream`; `drop()` closes every connection it carries
    (new ones are accepted again right away)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.num_dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def drop(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)
        self.num_dropped += len(sockets)

    def close(self) -> None:
        _close(self._listener)
        self.drop()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    _close(source)
    _close(sink)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
