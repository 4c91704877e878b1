"""The engine loop and the offline API.

One `step()` is one iteration of the loop: take new requests and aborts, schedule, run the
worker, update request state, detokenize and emit per-request deltas. `add_request` and
`abort` may be called from any thread; they take effect at the next step boundary. `step()`
itself runs on one thread at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common.log_text import loggable
from common.stages import log_stage
from contract.sampling import SamplingParams
from contract.step import Worker, WorkerInfo
from modelfiles.lora_files import parse_lora_spec
from modelfiles.tokenizer import Tokenizer, load_tokenizer
from scheduler.config import EngineConfig, EngineStats
from scheduler.engine_stats import collect_stats
from scheduler.errors import CapacityError, DuplicateRequestError
from scheduler.fanout import SequenceGroups, child_req_ids
from scheduler.grammars import GrammarCompiler
from scheduler.lora_registry import LoraRegistry
from scheduler.output_processor import RequestOutputState, final_delta
from scheduler.outputs import RequestDelta, RequestOutput, RequestOutputBuilder
from scheduler.request import Request, RequestStatus
from scheduler.request_factory import RequestFactory
from scheduler.scheduler import Scheduler, SchedulerOutput
from scheduler.tenant_usage import TenantLedger

__all__ = ["Engine", "EngineConfig", "EngineStats"]

logger = logging.getLogger("loom.engine")


class Engine:
    def __init__(self, worker: Worker, tokenizer: Tokenizer, config: EngineConfig) -> None:
        self.worker = worker
        self.tokenizer = tokenizer
        self.config = config
        self.info: WorkerInfo = worker.info()
        if config.cache.block_size != self.info.block_size:
            raise ValueError(
                f"block_size ({config.cache.block_size}) must equal the worker's "
                f"({self.info.block_size})"
            )
        max_model_len = config.model.max_model_len or self.info.max_seq_len
        if max_model_len > self.info.max_seq_len:
            raise ValueError(
                f"max_model_len must be <= the model's maximum length ({self.info.max_seq_len}), "
                f"got {max_model_len}"
            )
        self.max_model_len = max_model_len
        if config.scheduler.speculative == "draft" and not self.info.draft_model:
            raise ValueError(
                "speculative=draft needs a worker that runs the draft model (draft_model), "
                "and this one runs none"
            )
        # Every id that ends a sequence: the tokenizer's (tokenizer_config.json,
        # generation_config.json, the GGUF header) and the checkpoint's own.
        self.eos_ids: tuple[int, ...] = tuple(dict.fromkeys([*tokenizer.eos_ids, self.info.eos_id]))
        self.scheduler = Scheduler(
            config.scheduler,
            config.cache,
            self.info.num_kv_blocks,
            max_model_len,
            max_loras=min(config.lora.max_loras, self.info.max_loras),
        )
        self.loras = LoraRegistry(self.info)
        for spec in config.lora.lora:
            self.loras.load(*parse_lora_spec(spec))
        # Structured output's grammars, compiled once per constraint for this vocabulary.
        self.grammars = GrammarCompiler(
            tokenizer, self.info.vocab_size, self.eos_ids, config.scheduler
        )
        self._requests = RequestFactory(
            tokenizer,
            self.info.vocab_size,
            config.scheduler.max_n,
            self.eos_ids,
            self.scheduler.check_fits,
            self.grammars,
        )
        self._lock = threading.Lock()
        self._pending: list[Request] = []  # added, not yet taken by a step
        self._aborts: list[str] = []
        self._new_weights: dict[str, float] | None = None  # for the scheduler, at the next step
        # Added and not yet given their final delta; with n > 1 the sequences' ids too.
        self._live_req_ids: set[str] = set()
        self._num_pending_sequences = 0
        self._groups = SequenceGroups()  # requests with n > 1
        self._n_of: dict[str, int] = {}  # n of the live requests with n > 1
        self._num_waiting = 0  # the scheduler's, as of the last step (read by other threads)
        self._states: dict[str, RequestOutputState] = {}
        # A worker that can lose its state counts its sessions (contract/step.py's Worker).
        self._worker_epoch = worker.session_epoch
        # How the last step's worker call went, for the loop to count failures in a row:
        # why it failed while the worker stayed available (its requests failed, INTERNAL),
        # and whether it computed tokens (a step that only drops requests proves nothing).
        self.last_step_error: str | None = None
        self.last_step_computed = False
        # When the last step started, if it computed and left work for the next one.
        self._busy_step_start: float | None = None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **settings: Any) -> Engine:
        """An engine with the worker in this process: `settings` are EngineConfig's fields by
        name (`device="cpu", max_num_seqs=64, num_kv_blocks=256, ...`), the rest default; an
        unknown name is a TypeError naming it."""
        return cls.from_config(EngineConfig.from_kwargs(model=str(model_dir), **settings))

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        """Load the tokenizer and the in-process worker (torch is imported only here)."""
        from worker import create_worker

        with log_stage(logger, "reading the tokenizer"):
            tokenizer = load_tokenizer(config.model.model)
        return cls(create_worker(config.worker), tokenizer, config)

    # -- any thread -----------------------------------------------------------------------

    def add_request(
        self,
        prompt: str | Sequence[int],
        params: SamplingParams | None = None,
        req_id: str | None = None,
        tenant: str = "default",
        priority: int = 0,
        admit: Callable[[Request], None] | None = None,
        lora: str | None = None,
        deadline_s: float | None = None,
    ) -> str:
        """Queue a request; it joins the scheduler at the next step. Raises ValueError for
        invalid input and CapacityError when it cannot be taken. `admit`, when given, sees
        the validated request before it is queued and may raise to refuse it (quotas).
        `deadline_s`: seconds from now by which it must finish; a request that cannot ends
        with finish reason "deadline" (scheduler/deadlines.py). Returns its req_id."""
        [req_id] = self.add_requests(
            [prompt],
            params,
            [req_id],
            tenant,
            priority,
            None if admit is None else (lambda reqs: admit(reqs[0])),
            lora,
            deadline_s,
        )
        return req_id

    def add_requests(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | None,
        req_ids: Sequence[str | None],
        tenant: str = "default",
        priority: int = 0,
        admit: Callable[[list[Request]], None] | None = None,
        lora: str | None = None,
        deadline_s: float | None = None,
    ) -> list[str]:
        """Queue several requests (the prompts of one call) all or none: every prompt is
        validated before `admit` sees them together, and nothing is queued when any is
        refused. Raises as `add_request` does; returns their req_ids in order. `lora` names
        a LoRA adapter the engine serves (LoraNotFoundError otherwise); None: the base model."""
        ref = None if lora is None else self.loras.get(lora)
        reqs = [
            self._requests.make(prompt, params, req_id, tenant, priority, ref, deadline_s)
            for prompt, req_id in zip(prompts, req_ids, strict=True)
        ]
        if admit is not None:
            admit(reqs)
        self._enqueue_all(reqs)
        return [req.req_id for req in reqs]

    def _enqueue(self, req: Request) -> None:
        self._enqueue_all([req])

    def _enqueue_all(self, reqs: list[Request]) -> None:
        n = sum(req.params.n for req in reqs)
        with self._lock:
            claimed: set[str] = set()  # by these requests (and their sequences)
            for req in reqs:
                ids = {req.req_id, *child_req_ids(req.req_id, req.params.n)}
                if not (ids.isdisjoint(self._live_req_ids) and ids.isdisjoint(claimed)):
                    raise DuplicateRequestError(
                        f"req_id {req.req_id!r} is already in use by a live request"
                    )
                claimed |= ids
            cap = self.config.scheduler.max_queued_requests
            if cap is not None and self._num_waiting + self._num_pending_sequences + n > cap:
                raise CapacityError(
                    f"the waiting queue is full ({cap} requests)"
                    if n == 1
                    else f"the waiting queue cannot take {n} more sequences ({cap} requests)"
                )
            self._live_req_ids |= claimed
            for req in reqs:
                if req.params.n > 1:
                    self._n_of[req.req_id] = req.params.n
                self._pending.append(req)
            self._num_pending_sequences += n

    def abort(self, req_id: str) -> bool:
        """Abort a request at the next step (its blocks are freed there). Returns whether it
        was live; unknown ids and finished requests are ignored."""
        with self._lock:
            if req_id not in self._live_req_ids:
                return False
            self._aborts.append(req_id)
            return True

    def set_tenant_weights(self, weights: dict[str, float]) -> None:
        """Each tenant's share of the engine under contention (`queue_policy="fair"`); tenants
        not named weigh 1. Takes effect at the next step; raises ValueError for a weight that
        is not > 0."""
        weights = dict(weights)
        TenantLedger().set_weights(weights)  # validate here, on the caller's thread
        with self._lock:
            self._new_weights = weights

    def close(self) -> None:
        """Release the worker: stop a tensor-parallel worker's other ranks, end a remote
        worker's session. The engine is unusable afterwards."""
        self.worker.close()

    @property
    def worker_available(self) -> bool:
        """Whether the worker can run steps now (a remote one may be reconnecting)."""
        return self.worker.available

    def has_unfinished(self) -> bool:
        """Whether `step()` has work: live requests, or finished ones the worker must drop."""
        with self._lock:
            return bool(self._live_req_ids) or self.scheduler.has_unfinished()

    def stats(self) -> EngineStats:
        with self._lock:
            pending = [req.tenant for req in self._pending for _ in range(req.params.n)]
            pending_loras = [
                req.lora.name for req in self._pending if req.lora for _ in range(req.params.n)
            ]
        loras = tuple(self.loras.names())
        return collect_stats(self.scheduler, self._num_waiting, pending, pending_loras, loras)

    # -- the loop thread ------------------------------------------------------------------

    def step(self) -> list[RequestDelta]:
        """One iteration of the loop; returns what each request gained."""
        sched = self.scheduler
        started = time.monotonic()
        if self._busy_step_start is not None:
            # The loop came straight back from a step that computed: a whole step's period,
            # the engine's own work around the worker's included.
            sched.observe_step_time(started - self._busy_step_start)
        with self._lock:
            pending, self._pending = self._pending, []
            self._num_pending_sequences = 0
            aborts, self._aborts = self._aborts, []
            weights, self._new_weights = self._new_weights, None
        if weights is not None:
            sched.tenants.set_weights(weights)
        deltas: list[RequestDelta] = []
        for req in pending:
            deltas += self._schedule_new(self._groups.start(req))
        for req_id in aborts:
            deltas += self._abort_now(req_id)

        epoch = self.worker.session_epoch
        if epoch != self._worker_epoch:  # a new session: the worker holds nothing of ours
            self._worker_epoch = epoch
            lost = sched.worker_lost("the worker was reconnected; its state is lost", True)
            deltas.extend(final_delta(req) for req in lost)

        self.last_step_error, self.last_step_computed = None, False
        sched_out = sched.schedule()
        deltas.extend(self._states[req.req_id].next_delta() for req in sched_out.ended)
        step_input = sched_out.step_input
        if step_input.num_scheduled_tokens or step_input.finished_req_ids:
            try:
                step_out = self.worker.execute(step_input)
            except Exception as exc:
                deltas.extend(final_delta(req) for req in self._step_failed(sched_out, exc))
            else:
                self.last_step_computed = bool(step_input.num_scheduled_tokens)
                changed = sched.update(sched_out, step_out, self._scan_text)
                deltas.extend(self._states[req.req_id].next_delta() for req in changed)
        for delta in deltas:  # by sequence id, before the ids become the requests'
            if delta.finish_reason is not None:
                self._states.pop(delta.req_id, None)
        deltas, released = self._groups.route(deltas)
        deltas += self._schedule_new(released)

        with self._lock:
            for delta in deltas:
                if delta.finished:
                    n = self._n_of.pop(delta.req_id, 1)
                    self._live_req_ids.difference_update(
                        [delta.req_id, *child_req_ids(delta.req_id, n)]
                    )
            self._num_waiting = sched.num_waiting + self._groups.num_held
        busy = self.last_step_computed and bool(sched.requests)
        self._busy_step_start = started if busy else None
        return deltas

    def _schedule_new(self, reqs: list[Request]) -> list[RequestDelta]:
        """Hand new requests (or sequences) to the scheduler; the deltas of any that fail."""
        deltas = []
        for req in reqs:
            try:
                self.scheduler.add_request(req)
                self._states[req.req_id] = RequestOutputState(req, self.tokenizer)
            except Exception as exc:  # validated already: a bug, which fails this request only
                logger.exception("request %s could not join the scheduler", loggable(req.req_id))
                self.scheduler.finish_requests(
                    [req], RequestStatus.FINISHED_ERROR, f"admission failed: {exc!r}"
                )
                deltas.append(final_delta(req))
        return deltas

    def _abort_now(self, req_id: str) -> list[RequestDelta]:
        """The final deltas of an aborted request (of each of its sequences)."""
        found = self._groups.abort(req_id)
        scheduled, held = found if found is not None else ([req_id], [])
        reqs = [req for r in scheduled if (req := self.scheduler.abort_request(r)) is not None]
        return [final_delta(req) for req in reqs + held]

    def _step_failed(self, sched_out: SchedulerOutput, exc: Exception) -> list[Request]:
        """A worker that is still available failed this step: its requests fail (INTERNAL).
        One that is not (unreachable, a tensor-parallel rank gone) takes every request in
        flight with it (UNAVAILABLE)."""
        if self.worker_available:
            logger.exception(
                "worker step failed; failing its %d requests", len(sched_out.scheduled)
            )
            self.last_step_error = f"worker step failed: {exc!r}"
            return self.scheduler.fail_step(sched_out, self.last_step_error)
        logger.error("the worker is unavailable: %s; failing every request in flight", exc)
        return self.scheduler.worker_lost(f"the worker is unavailable: {exc}", False)

    def _scan_text(self, req: Request, final: bool) -> bool:
        return self._states[req.req_id].scan(final)

    def iter_deltas(self) -> Iterator[RequestDelta]:
        """Step until nothing is left, yielding every delta as it is made."""
        while self.has_unfinished():
            yield from self.step()

    def generate(
        self,
        prompts: str | Sequence[int] | Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        loras: str | Sequence[str | None] | None = None,
    ) -> list[RequestOutput]:
        """Run prompts to completion; outputs come in the order of `prompts`. `loras`: one
        adapter name for all, or one name (or None: the base model) per prompt. Drives the
        loop itself, so nothing else may call `step()` meanwhile."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt, text or token ids
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(
                f"params must hold one entry per prompt ({len(prompts)}), got {len(params)}"
            )
        if loras is None or isinstance(loras, str):
            loras = [loras] * len(prompts)
        if len(loras) != len(prompts):
            raise ValueError(
                f"loras must hold one entry per prompt ({len(prompts)}), got {len(loras)}"
            )
        refs = [None if name is None else self.loras.get(name) for name in loras]
        reqs = [
            self._requests.make(prompt, p, None, "default", 0, ref)
            for prompt, p, ref in zip(prompts, params, refs, strict=True)
        ]
        builders: dict[str, RequestOutputBuilder] = {}
        try:
            for req in reqs:
                self._enqueue(req)
                builders[req.req_id] = RequestOutputBuilder(req.req_id, req.prompt_token_ids)
        except Exception:
            for req_id in builders:
                self.abort(req_id)
            raise
        num_left = len(builders)
        while num_left:
            for delta in self.step():
                builder = builders.get(delta.req_id)
                if builder is not None:
                    builder.add(delta)
                    num_left -= delta.finished
        if self.has_unfinished() and not self._live_req_ids:
            self.step()  # hand the worker the last finished ids, so it keeps no stale state
        return [builder.build() for builder in builders.values()]
