"""The engine loop in its own thread, and the bridge from it to asyncio callers.

One thread calls `engine.step()` while any request is unfinished and sleeps on a condition
when there is none (no polling). After each step it hands every request's delta to the event
loop that submitted it, with one `call_soon_threadsafe` per loop, so the gRPC frontend
awaits deltas without ever blocking on the engine.

An exception escaping `engine.step()` fails the requests in flight (finish reason "error")
and aborts them in the engine, then the loop goes on; a worker step that fails inside
`engine.step()` has already failed its own requests. Either counts as a failed step
(scheduler/step_failures.py): after `max_step_failures` in a row the loop gives up and `alive`
turns False, which health checks report; a step that succeeds resets the count.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.log_text import loggable
from frontend.metrics import ServingMetrics
from scheduler.config import EngineStats
from scheduler.errors import DuplicateRequestError
from scheduler.outputs import RequestDelta
from scheduler.step_failures import StepFailures

log = logging.getLogger(__name__)
request_log = logging.getLogger("loom.requests")


class EngineDeadError(RuntimeError):
    """The engine loop has stopped; no request can be served (gRPC UNAVAILABLE)."""


@dataclass(slots=True, eq=False)
class RequestStream:
    """One request's deltas, delivered on the event loop that submitted it."""

    req_id: str
    tenant: str
    loop: asyncio.AbstractEventLoop
    arrival_time: float  # time.monotonic() at submission
    queue: asyncio.Queue[RequestDelta] = field(default_factory=asyncio.Queue)
    # Written by the engine thread only.
    last_token_time: float | None = None
    finished: bool = False  # set on the event loop when the final delta is taken

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> RequestDelta:
        if self.finished:
            raise StopAsyncIteration
        delta = await self.queue.get()
        self.finished = delta.finished
        return delta


class AsyncEngine:
    """Owns the engine loop thread. `add_request` and `abort` may be called from any thread;
    deltas arrive on the caller's event loop."""

    def __init__(
        self,
        engine: Any,
        metrics: ServingMetrics | None = None,
        max_step_failures: int = 3,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.max_step_failures = max_step_failures
        self._cond = threading.Condition()  # guards _streams and _stopping; wakes the loop
        self._streams: dict[str, RequestStream] = {}
        self._stopping = False
        self._fatal: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        # The engine's stats as of its last step, for any thread to read without touching the
        # engine: the loop thread swaps the whole object after each step (GetLoad reads it).
        self.last_stats: EngineStats = engine.stats()

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Stop the loop after the current step; requests still live end with "abort"."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._finish_all("abort", None)

    def wait_stopped(self, timeout: float | None = None) -> None:
        """Block until the loop thread has ended (shutdown, or it gave up)."""
        self._thread.join(timeout)

    @property
    def stop_reason(self) -> str | None:
        """Why the loop gave up (too many failed steps in a row); None otherwise."""
        return None if self._fatal is None else str(self._fatal)

    @property
    def alive(self) -> bool:
        """True while the loop thread runs and has not given up."""
        return self._thread.is_alive() and self._fatal is None and not self._stopping

    # ---- requests --------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | list[int],
        params: Any,
        *,
        req_id: str,
        tenant: str = "default",
        priority: int = 0,
        admit: Callable[[Any], None] | None = None,
        deadline_s: float | None = None,
    ) -> RequestStream:
        """Queue a request; call from the event loop that will read its stream. Raises what
        `engine.add_request` raises (ValueError, CapacityError, what `admit` raises),
        DuplicateRequestError, or EngineDeadError."""
        [stream] = self.add_requests(
            [prompt],
            params,
            req_ids=[req_id],
            tenant=tenant,
            priority=priority,
            admit=None if admit is None else (lambda reqs: admit(reqs[0])),
            deadline_s=deadline_s,
        )
        return stream

    def add_requests(
        self,
        prompts: list[str | list[int]],
        params: Any,
        *,
        req_ids: list[str],
        tenant: str = "default",
        priority: int = 0,
        admit: Callable[[list[Any]], None] | None = None,
        lora: str | None = None,
        deadline_s: float | None = None,
    ) -> list[RequestStream]:
        """Queue the requests of one call all or none (`engine.add_requests`): `admit` sees
        them all, validated, before any is queued. Raises as `add_request` does."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        streams = [RequestStream(req_id, tenant, loop, now) for req_id in req_ids]
        with self._cond:
            if not self.alive:
                raise EngineDeadError("the engine loop is not running")
            # The engine decides which ids are live; this only keeps a stream whose final
            # delta is still on its way from being replaced (the engine forgets an id when
            # the step that finished it returns, just before that delta is dispatched).
            for req_id in req_ids:
                if req_id in self._streams:
                    raise DuplicateRequestError(
                        f"req_id {req_id!r} is already in use by a live request"
                    )
            # Registered before the engine sees them, so their first deltas find a reader.
            for stream in streams:
                self._streams[stream.req_id] = stream
        try:
            # Validates and tokenizes here, on the caller's thread; the engine's lock is held
            # only to enqueue, never across a step.
            self.engine.add_requests(
                prompts,
                params,
                req_ids,
                tenant=tenant,
                priority=priority,
                admit=admit,
                lora=lora,
                deadline_s=deadline_s,
            )
        except BaseException:
            with self._cond:
                for req_id in req_ids:
                    self._streams.pop(req_id, None)
            raise
        with self._cond:
            # A step that failed meanwhile already ended these streams: drop the requests too.
            ended_meanwhile = [r for r in req_ids if r not in self._streams]
            self._cond.notify()
        for req_id in ended_meanwhile:
            self.engine.abort(req_id)
        return streams

    def abort(self, req_id: str) -> bool:
        """Abort a request (client gone, deadline passed, the Abort call); its final delta
        says "abort" and its blocks are freed at the next step. Returns whether it was live."""
        with self._cond:
            if req_id not in self._streams:
                return False
        aborted = self.engine.abort(req_id)
        with self._cond:
            self._cond.notify()
        return aborted

    def abort_all(self) -> None:
        with self._cond:
            req_ids = list(self._streams)
        for req_id in req_ids:
            self.abort(req_id)

    # ---- the loop thread -------------------------------------------------------------

    def _run(self) -> None:
        failures = StepFailures(self.max_step_failures)
        try:
            while True:
                with self._cond:
                    while not self._stopping and not self.engine.has_unfinished():
                        self._cond.wait()
                    if self._stopping:
                        return
                step_start = time.monotonic()
                try:
                    deltas = self.engine.step()
                except Exception as exc:
                    log.exception("engine step failed (%d in a row)", failures.consecutive + 1)
                    self._fail_in_flight(f"engine step failed: {exc!r}")
                    failures.failed(f"engine step failed: {exc!r}")
                    continue
                # Stats first: a caller that sees this step's tokens sees its stats too.
                self.last_stats = stats = self.engine.stats()
                if self.metrics is not None:
                    self.metrics.update_engine_stats(stats)
                self._dispatch(deltas, step_start)
                step_error = self.engine.last_step_error
                if step_error is not None:  # its requests have their final deltas, above
                    failures.failed(step_error)
                elif self.engine.last_step_computed:
                    failures.succeeded()  # a step that only dropped finished requests is neither
        except BaseException as exc:
            self._fatal = exc
            log.critical("engine loop stopped: %r; the server is NOT_SERVING", exc)
            self._finish_all("error", f"engine loop stopped: {exc!r}")

    def _fail_in_flight(self, error: str) -> None:
        """After a failed step nothing says which request broke it: fail them all, and abort
        them so the engine frees their blocks."""
        for req_id in self._finish_all("error", error):
            try:
                self.engine.abort(req_id)
            except Exception:
                log.exception("abort of %s after a failed step", loggable(req_id))

    def _finish_all(self, finish_reason: str, error: str | None) -> list[str]:
        with self._cond:
            req_ids = list(self._streams)
        now = time.monotonic()
        self._dispatch(
            [RequestDelta(r, finish_reason=finish_reason, error=error) for r in req_ids], now
        )
        return req_ids

    def _dispatch(self, deltas: list[RequestDelta], step_start: float) -> None:
        now = time.monotonic()
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[RequestStream, RequestDelta]]]
        by_loop = defaultdict(list)
        with self._cond:
            for delta in deltas:
                stream = self._streams.get(delta.req_id)
                if stream is None:
                    continue  # failed or shut down already; a late "abort" delta lands here
                if delta.finished:
                    del self._streams[delta.req_id]
                by_loop[stream.loop].append((stream, delta))
        for loop, items in by_loop.items():
            self._record_step(items, step_start, now)
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is left to read
                for stream, delta in items:
                    if not delta.finished:
                        self.engine.abort(stream.req_id)

    def _record_step(
        self, items: list[tuple[RequestStream, RequestDelta]], step_start: float, now: float
    ) -> None:
        """A request with n sequences has a delta per sequence in a step: its tokens count
        once there, as one gap since its previous step."""
        num_tokens: dict[RequestStream, int] = defaultdict(int)
        final: dict[RequestStream, RequestDelta] = {}
        for stream, delta in items:
            num_tokens[stream] += len(delta.token_ids)
            if delta.finished:
                final[stream] = delta
        for stream, count in num_tokens.items():
            self._record(stream, count, final.get(stream), step_start, now)

    def _record(
        self,
        stream: RequestStream,
        num_tokens: int,
        delta: RequestDelta | None,  # the request's final delta, when it came this step
        step_start: float,
        now: float,
    ) -> None:
        metrics = self.metrics
        if num_tokens:
            if stream.last_token_time is None:
                if metrics is not None:
                    queue_time = max(0.0, step_start - stream.arrival_time)
                    metrics.observe_first_token(
                        stream.tenant, now - stream.arrival_time, queue_time
                    )
                gap = None
            else:
                gap = now - stream.last_token_time
            stream.last_token_time = now
            if metrics is not None:
                metrics.observe_tokens(stream.tenant, num_tokens, gap)
        if delta is None:
            return
        e2e = now - stream.arrival_time
        usage = delta.usage
        num_prompt = usage.prompt_tokens if usage is not None else 0
        if metrics is not None:
            metrics.observe_finished(stream.tenant, delta.finish_reason, num_prompt, e2e)
        preempted = ",".join(f"{cause}:{n}" for cause, n in sorted(delta.preemptions.items()))
        request_log.info(
            "request %s tenant=%s finish=%s prompt_tokens=%d completion_tokens=%d "
            "cached_prompt_tokens=%d e2e=%.1fms%s%s",
            loggable(stream.req_id),
            loggable(stream.tenant),
            delta.finish_reason,
            num_prompt,
            usage.completion_tokens if usage is not None else 0,
            usage.cached_prompt_tokens if usage is not None else 0,
            e2e * 1000,
            f" preempted={preempted}" if preempted else "",
            f" error={loggable(delta.error)}" if delta.error else "",
        )


def _deliver(items: list[tuple[RequestStream, RequestDelta]]) -> None:
    for stream, delta in items:
        stream.queue.put_nowait(delta)
