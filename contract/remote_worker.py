"""The scheduler's end of a remote worker: contract/step.py's Worker over proto/worker.proto.

`RemoteWorker.connect(target, ...)` waits for a `python -m worker serve` to answer, starts a
session on it (Connect: the worker drops every request it held) and reads its Info, tokenizer
files included, so this host needs no model files and no torch. Each `execute` is one Step
call with a deadline of `timeout` seconds.

A step that cannot reach the worker within the deadline, or that the worker answers with
UNAVAILABLE or FAILED_PRECONDITION (it restarted, or another scheduler took it over), turns
the worker unavailable and raises WorkerUnavailableError; the engine then fails every request
in flight (UNAVAILABLE) and the frontend reports NOT_SERVING. A background thread reconnects
with backoff, and renews the session's lease with Health calls while no step does. Each new
session counts in `session_epoch`, which tells the engine that the worker holds nothing of
what it sent before (nor any cached prefix). A worker that comes back with another model,
or fewer KV blocks, stays unavailable.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid

import grpc

from contract.step import StepInput, StepOutput, WorkerInfo
from contract.step_proto import (
    MAX_MESSAGE_BYTES,
    SESSION_METADATA,
    step_input_to_proto,
    step_output_from_proto,
    worker_info_from_proto,
)
from loompb import worker_pb2, worker_pb2_grpc

log = logging.getLogger("loom.remote_worker")

FIRST_BACKOFF, MAX_BACKOFF = 0.1, 2.0  # seconds between reconnect attempts, doubling
# Codes that say the worker, not this step, is the problem.
_UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}


class WorkerUnavailableError(RuntimeError):
    """The worker cannot be reached, or lost this scheduler's session."""


class WorkerRefusedError(RuntimeError):
    """Another scheduler drives the worker (FAILED_PRECONDITION at Connect)."""


class WorkerStepError(RuntimeError):
    """The worker refused or failed this one step (INVALID_ARGUMENT, INTERNAL) and serves on."""


class WorkerChangedError(RuntimeError):
    """The worker came back with another model, tokenizer or KV cache."""


@dataclasses.dataclass(slots=True, frozen=True)
class _Connection:
    channel: grpc.Channel
    stub: worker_pb2_grpc.WorkerStub
    session_id: str
    lease_seconds: float
    info: WorkerInfo
    tokenizer_files: dict[str, bytes]  # file name -> bytes


class RemoteWorker:
    def __init__(self, target: str, timeout: float) -> None:
        self.target = target
        self.timeout = timeout
        self.scheduler_id = uuid.uuid4().hex  # this process, across reconnects
        self.session_epoch = 0
        self.available = False
        self.down_reason = "not connected yet"
        self._conn: _Connection | None = None
        self._first: _Connection | None = None  # what a reconnect must find again
        self._lock = threading.Lock()  # one step at a time; guards _conn
        self._last_contact = 0.0
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._maintain, name="remote-worker", daemon=True)

    @classmethod
    def connect(cls, target: str, timeout: float, startup_timeout: float) -> RemoteWorker:
        """Wait up to `startup_timeout` seconds for the worker; WorkerRefusedError when
        another scheduler drives it, WorkerUnavailableError when it never answers."""
        worker = cls(target, timeout)
        deadline = time.monotonic() + startup_timeout
        delay = FIRST_BACKOFF
        while True:
            try:
                worker._connect()
                break
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    message = f"the worker at {target} refused: {exc.details()}"
                    raise WorkerRefusedError(message) from None
                if time.monotonic() + delay > deadline:
                    raise WorkerUnavailableError(
                        f"no worker answered at {target} within {startup_timeout:g} s "
                        f"({exc.code().name}: {exc.details()})"
                    ) from None
                log.info("waiting for the worker at %s (%s)", target, exc.code().name)
                time.sleep(delay)  # nothing else runs yet: a plain wait before the next try
                delay = min(2 * delay, MAX_BACKOFF)
        worker._thread.start()
        return worker

    # ---- the Worker protocol ------------------------------------------------------------

    def info(self) -> WorkerInfo:
        assert self._first is not None
        return self._first.info

    @property
    def tokenizer_files(self) -> dict[str, bytes]:
        assert self._first is not None
        return self._first.tokenizer_files

    def execute(self, step: StepInput) -> StepOutput:
        request = step_input_to_proto(step)
        with self._lock:
            conn = self._conn
            if not self.available or conn is None:
                raise WorkerUnavailableError(
                    f"the worker at {self.target} is unavailable: {self.down_reason}"
                )
            try:
                reply = conn.stub.Step(
                    request, timeout=self.timeout, metadata=((SESSION_METADATA, conn.session_id),)
                )
            except grpc.RpcError as exc:
                problem = f"{exc.code().name}: {exc.details()}"
                if exc.code() not in _UNREACHABLE:
                    raise WorkerStepError(f"the worker failed the step: {problem}") from None
                self._mark_down(f"step failed: {problem}")
                raise WorkerUnavailableError(f"the worker at {self.target}: {problem}") from None
            self._last_contact = time.monotonic()
        return step_output_from_proto(reply)

    def close(self) -> None:
        """End the session, so that another scheduler may drive the worker at once."""
        self._closed = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        with self._lock:
            conn, self._conn = self._conn, None
            self.available = False
            self.down_reason = "closed"
        if conn is None:
            return
        try:
            conn.stub.Disconnect(
                worker_pb2.DisconnectRequest(),
                timeout=self.timeout,
                metadata=((SESSION_METADATA, conn.session_id),),
            )
        except grpc.RpcError as exc:  # gone already: its lease runs out by itself
            log.info("disconnecting from the worker at %s: %s", self.target, _describe(exc))
        conn.channel.close()

    # ---- connections --------------------------------------------------------------------

    def _connect(self) -> None:
        """A new channel and session; raises grpc.RpcError or WorkerChangedError."""
        channel = grpc.insecure_channel(
            self.target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        stub = worker_pb2_grpc.WorkerStub(channel)
        try:
            session = stub.Connect(
                worker_pb2.ConnectRequest(scheduler_id=self.scheduler_id), timeout=self.timeout
            )
            info = stub.Info(worker_pb2.InfoRequest(), timeout=self.timeout)
        except BaseException:
            channel.close()
            raise
        conn = _Connection(
            channel,
            stub,
            session.session_id,
            session.lease_seconds,
            worker_info_from_proto(info),
            dict(info.tokenizer_files),
        )
        first = self._first
        if first is not None and not _can_resume(first, conn):
            channel.close()
            raise WorkerChangedError(
                f"the worker at {self.target} came back with another model, tokenizer or a "
                f"smaller KV cache ({conn.info} instead of {first.info}); restart this "
                "scheduler to use it"
            )
        with self._lock:
            old, self._conn = self._conn, conn
            self._first = first or conn
            self.session_epoch += 1
            self._last_contact = time.monotonic()
            self.available = True
        if old is not None:
            old.channel.close()

    def _mark_down(self, reason: str) -> None:
        if self.available:
            log.error("the worker at %s is unavailable: %s; reconnecting", self.target, reason)
        self.available = False
        self.down_reason = reason
        self._wake.set()

    def _maintain(self) -> None:
        """Reconnect while down (backing off); renew the lease while idle."""
        delay = FIRST_BACKOFF
        while not self._closed:
            if not self.available:
                self._wake.clear()
                try:
                    self._connect()
                    log.info("reconnected to the worker at %s", self.target)
                    delay = FIRST_BACKOFF
                except (grpc.RpcError, WorkerChangedError) as exc:
                    reason = _describe(exc)
                    self.down_reason = f"reconnecting: {reason}"
                    log.debug("worker at %s: %s; next try in %.1f s", self.target, reason, delay)
                    self._wake.wait(delay)
                    delay = min(2 * delay, MAX_BACKOFF)
                continue
            conn = self._conn
            if conn is None:  # closed meanwhile
                continue
            due = self._last_contact + conn.lease_seconds / 3 - time.monotonic()
            if due > 0:
                self._wake.wait(due)
                self._wake.clear()
                continue
            self._renew_lease(conn)

    def _renew_lease(self, conn: _Connection) -> None:
        try:
            reply = conn.stub.Health(
                worker_pb2.HealthRequest(),
                timeout=self.timeout,
                metadata=((SESSION_METADATA, conn.session_id),),
            )
        except grpc.RpcError as exc:
            self._mark_down(f"health check failed: {exc.code().name}: {exc.details()}")
            return
        if conn is not self._conn:
            return  # reconnected meanwhile
        if not reply.serving:
            self._mark_down(f"the worker is not serving: {reply.message}")
        elif not reply.session_live:
            self._mark_down("the worker lost this scheduler's session (restarted, or taken over)")
        else:
            self._last_contact = max(self._last_contact, time.monotonic())


def _can_resume(first: _Connection, new: _Connection) -> bool:
    """Whether the scheduler, sized for `first`, can drive `new`: the same model and
    tokenizer, and at least as many KV blocks (a GPU worker sized by free memory may find a
    little more after a restart; the extra blocks go unused)."""
    same = dataclasses.replace(new.info, num_kv_blocks=first.info.num_kv_blocks)
    return (
        same == first.info
        and new.tokenizer_files == first.tokenizer_files
        and new.info.num_kv_blocks >= first.info.num_kv_blocks
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)
