"""The worker server: one worker (embedded runner, or rank 0 of a tensor-parallel group)
behind proto/worker.proto, for a scheduler in another process or on another host.

    server = WorkerServer(worker, WorkerServerConfig(port=0), tokenizer_files(model_dir))
    server.start()            # -> the port; also grpc.health.v1 and reflection
    ...
    server.stop()

One scheduler drives it at a time, in a session (see proto/worker.proto): Connect starts one
and drops every request the worker held, Step, Health and Disconnect name it in
`loom-session-id` metadata. A session that is silent for `session_timeout` seconds may be
taken over by another scheduler; until then, or until it disconnects, another scheduler's
Connect is FAILED_PRECONDITION. Steps run one at a
time, and Connect waits for a step in flight, so a new session never races an old step.

Every Step is checked against the worker's state before any of it is applied
(worker/step_check.py): a malformed one is INVALID_ARGUMENT and changes nothing but dropping
its finished requests; bytes that do not parse are INVALID_ARGUMENT on every RPC
(serving/rpc_guard.py). When the worker stops being available (a tensor-parallel rank failed)
the step is UNAVAILABLE, health turns NOT_SERVING and `fatal` is set: such a worker cannot
recover, and `python -m worker serve` exits so that it can be restarted.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from common.log_text import loggable
from contract.step import StepInput, StepOutput, Worker
from contract.step_proto import (
    MAX_MESSAGE_BYTES,
    SESSION_METADATA,
    step_input_from_proto,
    step_output_to_proto,
    worker_info_to_proto,
)
from loompb import worker_pb2, worker_pb2_grpc
from serving.rpc_guard import RpcGuard
from worker.config import WorkerServerConfig
from worker.step_check import StepRejected

log = logging.getLogger("loom.worker.server")

SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


class ServedWorker(Worker, Protocol):
    """A worker in this process, as the server drives it."""

    requests: dict[str, Any]  # req_id -> RequestState (token_ids, block_ids, num_computed)
    # Set when the worker breaks while idle (a tensor-parallel rank died), with `failure`
    # saying why; None for a worker that cannot break on its own.
    failed: threading.Event | None
    failure: str | None


@dataclass(slots=True)
class Session:
    scheduler_id: str
    session_id: str
    last_seen: float  # time.monotonic() of its last step or health check


class WorkerService(worker_pb2_grpc.WorkerServicer):
    def __init__(
        self,
        worker: ServedWorker,
        tokenizer_files: dict[str, bytes],
        session_timeout: float,
        health_servicer: health.HealthServicer,
        step_thread: futures.Executor | None = None,
    ) -> None:
        self.worker = worker
        self.session_timeout = session_timeout
        self.health = health_servicer
        self.fatal = threading.Event()
        self._info = worker.info()
        self._tokenizer_files = tokenizer_files
        self._step_lock = threading.Lock()  # one step at a time; Connect waits for it
        # Every step runs on one thread, whichever RPC thread took the call: OpenMP keeps a
        # team of threads per thread that calls into it, and with more than one team in the
        # process it stops keeping its threads awake between parallel regions (on CPU, a
        # 60M-model decode step then takes 10 ms instead of 6). Best is the thread that
        # loaded the worker (see worker/cli.py).
        self._step_thread = step_thread or futures.ThreadPoolExecutor(1, "worker-step")
        self._session_lock = threading.Lock()
        self._session: Session | None = None
        self._failure: str | None = None
        if worker.failed is not None:
            threading.Thread(target=self._watch, args=(worker.failed,), daemon=True).start()

    def _watch(self, failed: threading.Event) -> None:
        failed.wait()
        self._fail(self.worker.failure or "the worker failed")

    # ---- sessions ----------------------------------------------------------------------

    def _caller_session(self, context: Any) -> str:
        return dict(context.invocation_metadata()).get(SESSION_METADATA, "")

    def _touch(self, session_id: str) -> bool:
        """Renew the lease of `session_id` when it is the live session."""
        with self._session_lock:
            live = self._session is not None and self._session.session_id == session_id
            if live:
                self._session.last_seen = time.monotonic()
            return live

    def Connect(self, request: worker_pb2.ConnectRequest, context: Any) -> Any:
        if not request.scheduler_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "scheduler_id must not be empty")
        self._check_available(context)
        with self._step_lock:
            with self._session_lock:
                held = self._session
                if held is not None and held.scheduler_id != request.scheduler_id:
                    silent = time.monotonic() - held.last_seen
                    if silent < self.session_timeout:
                        context.abort(
                            grpc.StatusCode.FAILED_PRECONDITION,
                            f"this worker is driven by scheduler {held.scheduler_id} (heard "
                            f"from {silent:.1f} s ago); one scheduler at a time: it is free "
                            f"once that one is silent for {self.session_timeout:g} s",
                        )
                session = Session(request.scheduler_id, uuid.uuid4().hex, time.monotonic())
                self._session = session
            # The new session starts from nothing: drop every request of the old one.
            if self.worker.requests:
                self._run(StepInput(finished_req_ids=list(self.worker.requests)), context)
        log.info(
            "scheduler %s connected (session %s)",
            loggable(request.scheduler_id),
            session.session_id,
        )
        return worker_pb2.ConnectResponse(
            session_id=session.session_id, lease_seconds=self.session_timeout
        )

    def Disconnect(self, request: Any, context: Any) -> worker_pb2.DisconnectResponse:
        session_id = self._caller_session(context)
        with self._step_lock:
            with self._session_lock:
                held = self._session
                ended = held is not None and held.session_id == session_id
                if ended:
                    self._session = None
            if ended and self.worker.requests:
                self._run(StepInput(finished_req_ids=list(self.worker.requests)), context)
        if ended:
            log.info("scheduler %s disconnected", loggable(held.scheduler_id))
        return worker_pb2.DisconnectResponse(ended=ended)

    # ---- calls -------------------------------------------------------------------------

    def Info(self, request: Any, context: Any) -> worker_pb2.WorkerInfo:
        return worker_info_to_proto(self._info, self._tokenizer_files)

    def Health(self, request: Any, context: Any) -> worker_pb2.HealthResponse:
        live = self._touch(self._caller_session(context))
        return worker_pb2.HealthResponse(
            serving=self._failure is None, message=self._failure or "", session_live=live
        )

    def Step(self, request: worker_pb2.StepInput, context: Any) -> worker_pb2.StepOutput:
        """Bytes that do not parse as a StepInput never get here: the server's RpcGuard
        refuses them INVALID_ARGUMENT (serving/rpc_guard.py)."""
        session_id = self._caller_session(context)
        self._check_available(context)
        with self._step_lock:
            if not self._touch(session_id):
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"session {session_id or '(none)'} is not this worker's live session (the "
                    "worker restarted, or another scheduler connected): call Connect",
                )
            try:
                step = step_input_from_proto(request)
                output = self._run(step, context)
            except ValueError as exc:  # malformed, or StepRejected: it does not fit the state
                # Nothing of the step is applied; what it finished can go anyway.
                self._run(StepInput(finished_req_ids=list(request.finished_req_ids)), context)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed step: {exc}")
            self._touch(session_id)
        return step_output_to_proto(output)

    def _run(self, step: StepInput, context: Any) -> StepOutput:
        try:
            return self._step_thread.submit(self.worker.execute, step).result()
        except StepRejected:
            raise
        except Exception as exc:
            if self.worker.available:
                log.exception("step failed")
                context.abort(grpc.StatusCode.INTERNAL, f"step failed: {exc!r}")
            self._fail(f"{exc}")
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the worker cannot run steps: {exc}")
            raise AssertionError("unreachable: context.abort raises") from exc

    def _check_available(self, context: Any) -> None:
        if self._failure is not None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"the worker cannot run steps: {self._failure}"
            )

    def _fail(self, reason: str) -> None:
        if self._failure is not None:
            return
        log.critical("the worker cannot run steps any more: %s", reason)
        self._failure = reason
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.fatal.set()


class WorkerServer:
    """The gRPC server around one worker: Worker, grpc.health.v1 and reflection."""

    def __init__(
        self,
        worker: ServedWorker,
        config: WorkerServerConfig,
        tokenizer_files: dict[str, bytes],
        step_thread: futures.Executor | None = None,
    ) -> None:
        """`step_thread`: the one-thread executor that runs every step (by default a new
        one; pass the one that created the worker)."""
        self.config = config
        self.health = health.HealthServicer()
        self.service = WorkerService(
            worker, tokenizer_files, config.session_timeout, self.health, step_thread
        )
        self.port: int | None = None
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="worker-rpc"),
            interceptors=[RpcGuard()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )

    @property
    def fatal(self) -> threading.Event:
        """Set once the worker can run no more steps."""
        return self.service.fatal

    def start(self) -> int:
        worker_pb2_grpc.add_WorkerServicer_to_server(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        host = self.config.host
        address = f"[{host}]:{self.config.port}" if ":" in host else f"{host}:{self.config.port}"
        self.port = self._server.add_insecure_port(address)  # RuntimeError when taken
        self._server.start()
        for service in ("", SERVICE_NAME):
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()

