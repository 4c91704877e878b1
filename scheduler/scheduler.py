"""Who runs this step, and how many tokens each gets.

There is no prefill phase and no decode phase. Each request has `num_tokens` (prompt plus
output so far) and `num_computed_tokens` (tokens whose K/V are cached); a step hands out
tokens so that the second catches up with the first, under a token budget per step
(`max_num_batched_tokens`) and a cap on running requests (`max_num_seqs`):

0. Requests that can no longer finish by their deadline end (scheduler/deadlines.py), before
   they use more compute.
1. Running requests first, most important first: a decode costs 1 token, an unfinished
   prefill gets its next chunk (at most `long_prefill_threshold` tokens, and never so much
   that a later running request would find no token left: decodes are never stalled).
2. A request whose next tokens need a block when none is free preempts the least important
   running request (the last in running order), possibly itself: its blocks are freed and
   it waits to be recomputed, from whatever its prefix still has in the cache.
3. Then waiting requests, in the order the queue policy picks, while budget, blocks and
   `max_num_seqs` allow (under `deadline`, and while the step time of the grown batch keeps
   the running requests in time and suits the deadlines of recent arrivals); a prefix-cache
   hit counts as computed. When the next one finds no room, running requests the policy
   ranks below it that have run their quantum give up their places to it
   (scheduler/preemption.py), by the same recompute as in 2.

The rule between the two preemptions: a step that preempted for blocks (2) admits nothing and
preempts for nothing else, since the blocks it freed are owed to the running requests that
lacked them (admitting would hand them out again, and the running ones would preempt each other
step after step). A step preempts for share or priority (3) only to admit, in that same step,
the waiting request it preempted for: its victims leave this step's batch (their tokens return
to the budget) and their seats and blocks go to that request and nothing else. So no step both
frees blocks for a running request and hands blocks to a waiting one, and no preemption is
for nothing.

`update()` is the one place where request state advances after the worker ran.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from contract.step import NewRequest, RunningRequest, StepInput, StepOutput
from scheduler.config import SchedulerConfig
from scheduler.deadlines import BatchLimit, DeadlineEstimator, DeadlineWatch, RecentArrivals
from scheduler.errors import CapacityError
from scheduler.kv_cache_manager import KVCacheManager
from scheduler.preemption import Room, choose_victims
from scheduler.queue_policy import FCFSPolicy, create_queue_policy
from scheduler.request import Request, RequestStatus
from scheduler.speculation import Speculator, verified_proposals
from scheduler.step_results import (
    TextScanner,
    add_prompt_logprobs,
    advance_computed,
    append_output,
    output_row_finder,
    scan_for_stop_string,
)
from scheduler.tenant_usage import TenantLedger, TenantUsage
from scheduler.token_masks import advance_matcher, step_token_masks
from worker.config import CacheConfig

__all__ = ["Scheduler", "SchedulerOutput", "TextScanner"]

RUNNING = RequestStatus.RUNNING
NATURAL_ENDS = (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH)


@dataclass(slots=True)
class SchedulerOutput:
    step_input: StepInput
    scheduled: list[Request] = field(default_factory=list)  # in the order they were scheduled
    num_preempted: int = 0
    ended: list[Request] = field(default_factory=list)  # finished by `schedule` (deadlines)


class Scheduler:
    """`num_blocks` is the worker's KV cache size and `max_model_len` the resolved model
    length: facts the engine learns from the worker, beside the settings."""

    def __init__(
        self,
        config: SchedulerConfig,
        cache: CacheConfig,
        num_blocks: int,
        max_model_len: int,
        max_loras: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock  # the time deadlines are on
        self.block_size = cache.block_size
        self.enable_prefix_caching = config.enable_prefix_caching
        self.num_blocks = num_blocks
        self.max_model_len = max_model_len
        self.max_loras = max_loras  # distinct LoRA adapters among running requests
        self.kv = KVCacheManager(num_blocks, cache.block_size, config.enable_prefix_caching)
        chunk = min(config.long_prefill_threshold, config.max_num_batched_tokens)
        self.deadlines = DeadlineEstimator(chunk)
        self.waiting = create_queue_policy(config.queue_policy, self.deadlines)
        self.speculator = Speculator(config, max_model_len) if config.speculative != "off" else None
        self._running_key = self.waiting.running_key
        self._preempts_for_room = config.policy_preemption and not isinstance(
            self.waiting, FCFSPolicy
        )
        self.running: list[Request] = []  # sorted by the policy's running key
        self.requests: dict[str, Request] = {}  # every unfinished request
        self._deadlines = DeadlineWatch(self.deadlines, self.waiting.predicts_deadlines)
        self._arrivals = RecentArrivals(self.deadlines)
        self._num_rows = 0  # requests in the last step scheduled: what its period is paired with
        self._batch_limited = False  # the last step stopped admitting for the deadlines
        self.tenants = TenantLedger(config.fair_w_in, config.fair_w_out)
        self.tenant_usage: dict[str, TenantUsage] = self.tenants.usage
        self.num_preemptions = 0
        self._next_arrival_seq = 0
        # The worker drops these at the next step; a req_id here is not re-sent before then.
        self._finished_req_ids: dict[str, None] = {}

    # -- admission ------------------------------------------------------------------------

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Refuse what could never run: over the model length, or bigger than the cache. The
        engine calls this once per request, before queueing it."""
        total = num_prompt_tokens + max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) must be <= "
                f"the maximum model length ({self.max_model_len}), got {total}"
            )
        # The last generated token is never computed, so it needs no slot.
        num_blocks = self.kv.blocks_needed(total - 1)
        if num_blocks > self.num_blocks:
            raise CapacityError(
                f"prompt + max_tokens need {num_blocks} KV blocks, the cache has {self.num_blocks}"
            )

    def add_request(self, req: Request) -> None:
        """Queue a request that passed `check_fits`, under an id no live request has."""
        req.arrival_seq = self._next_arrival_seq
        self._next_arrival_seq += 1
        req.tenant_usage = self.tenants.of(req.tenant)
        req.tenant_usage.num_unfinished += 1
        req.status = RequestStatus.WAITING
        self.requests[req.req_id] = req
        if req.deadline is not None:
            self._deadlines.add(req)
        if self.waiting.predicts_deadlines:
            self._arrivals.add(req, self.clock())
        self.waiting.add(req)

    def observe_step_time(self, seconds: float) -> None:
        """How long the engine's last step took: the price of a step in deadline estimates."""
        # Only `deadline` prices steps by their rows; the fit is not paid for otherwise.
        rows = self._num_rows if self.waiting.predicts_deadlines else 0
        self.deadlines.timer.observe(seconds, rows)

    # -- one step -------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput(StepInput())
        if len(self._deadlines):
            self._end_missed_deadlines(out, self.clock())
        self.waiting.order_running(self.running)
        budget = self._schedule_running(out, self.config.max_num_batched_tokens)
        # Admit waiting requests, unless blocks just ran out (the rule in the docstring).
        if not out.num_preempted:
            self._schedule_waiting(out, budget)
        out.step_input.finished_req_ids = list(self._finished_req_ids)
        self._finished_req_ids.clear()
        out.step_input.token_masks = step_token_masks(out.scheduled, out.step_input)
        self._num_rows = len(out.scheduled)
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        """Give each running request its decode token or next prefill chunk; returns the
        budget left."""
        threshold = self.config.long_prefill_threshold
        running = self.running
        # Preemption pops victims off the end of `running` while this loop walks it from the
        # front; a list iterator stops at the list's current length, so that is safe.
        for i, req in enumerate(running):
            num_new = req.num_tokens - req.num_computed_tokens
            if num_new != 1:
                # Leave one token for each running request after this one.
                num_new = min(num_new, threshold, budget - (len(running) - i - 1))
                if num_new <= 0:
                    continue
            elif self.speculator is not None:
                num_later = len(running) - i - 1
                num_new += self._propose(out, req, budget - num_later - 1, len(running), num_later)
            if req.num_computed_tokens + num_new > len(req.block_ids) * self.block_size:
                while self.kv.allocate_slots(req, num_new) is None:
                    victim = running.pop()
                    self._preempt(victim, "blocks")
                    out.num_preempted += 1
                    if victim is req:
                        break
                if req.status is not RUNNING:
                    break  # it preempted itself, the last running request
            out.step_input.running.append(
                RunningRequest(
                    req.req_id,
                    req.all_token_ids[req.num_sent_tokens :],
                    req.block_ids[req.num_sent_blocks :],
                )
            )
            self._mark_scheduled(out, req, num_new)
            budget -= num_new
        return budget

    def _propose(
        self, out: SchedulerOutput, req: Request, room: int, num_running: int, num_later: int
    ) -> int:
        """How many tokens are proposed after a decoding request's last one, their slots
        allocated: the proposals themselves (`spec_token_ids`), or their number for the
        worker's draft model (`num_draft_tokens`). 0 when it does not speculate, or when blocks
        are short: a guess never preempts, nor takes the last blocks the `num_later` running
        requests after it may need."""
        speculator = self.speculator
        assert speculator is not None
        k = speculator.num_to_propose(req, room, num_running)
        proposed = speculator.propose(req, k) if k and not speculator.drafts else []
        k = k if speculator.drafts else len(proposed)
        if not k:
            return 0
        if self.kv.allocate_slots(req, 1 + k) is None or self.kv.pool.num_free_blocks < num_later:
            self.kv.trim(req, req.num_computed_tokens + 1)
            return 0
        if proposed:
            out.step_input.spec_token_ids[req.req_id] = proposed
        else:
            out.step_input.num_draft_tokens[req.req_id] = k
        return k

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        """Admit waiting requests in the policy's order while budget, blocks and seats last,
        or while running requests the policy ranks below the next one make room for it."""
        waiting = self.waiting
        threshold = self.config.long_prefill_threshold
        loras = {r.lora.lora_id for r in self.running if r.lora is not None}
        # Under `deadline`, the batch grows only while its running requests can still finish
        # (scheduler/deadlines.py); with nothing running the first arrival is tried.
        limits = self.waiting.predicts_deadlines
        limit = None  # built when first needed
        self._batch_limited = False
        while len(waiting):
            has_seat = len(self.running) < self.config.max_num_seqs
            if not (self._preempts_for_room or (budget > 0 and has_seat)):
                break
            req = waiting.peek()
            if req.req_id in self._finished_req_ids:
                break  # the worker drops its old state first, at this coming step
            if req.lora is not None and req.lora.lora_id not in loras:
                if len(loras) >= self.max_loras:
                    break  # it waits, in its turn, until an adapter's requests finish
                loras.add(req.lora.lora_id)
            if limits and limit is None and self.running:
                now = self.clock()
                limit = BatchLimit(
                    self.deadlines, self.running, now, self._arrivals.slowest_step(now)
                )
            if limit is not None and not limit.admits(req, len(out.scheduled)):
                self._batch_limited = True
                break
            cached = self.kv.find_cached_prefix(req)
            num_cached_tokens = None
            if budget > 0 and has_seat:
                num_new = min(req.num_tokens - len(cached) * self.block_size, threshold, budget)
                num_cached_tokens = self.kv.admit(req, num_new, cached)
            if num_cached_tokens is None:
                room = Room(
                    req, cached, budget, self.config.max_num_seqs - len(self.running), threshold
                )
                victims = self._choose_victims(out, room)
                if victims is None:
                    break
                # Out of the queue before the victims join it: they may come first in it.
                waiting.pop()
                budget = self._preempt_victims(out, victims, budget)
                num_new = min(req.num_tokens - len(cached) * self.block_size, threshold, budget)
                num_cached_tokens = self.kv.admit(req, num_new, cached)
                assert num_cached_tokens is not None, "the victims were to make room"
            else:
                waiting.pop()
            req.tenant_usage.charge_prefill(req.num_tokens - num_cached_tokens)
            req.tenant_usage.num_running += 1
            req.num_output_tokens_at_admission = len(req.output_token_ids)
            req.num_computed_tokens = num_cached_tokens
            req.status = RUNNING
            if req.num_cached_prompt_tokens < 0:  # first admission: report its cache hit
                req.num_cached_prompt_tokens = min(num_cached_tokens, len(req.prompt_token_ids))
            bisect.insort(self.running, req, key=self._running_key)
            out.step_input.new.append(
                NewRequest(
                    req.req_id,
                    list(req.all_token_ids),
                    list(req.block_ids),
                    req.sampling,
                    num_cached_tokens,
                    num_output_tokens=len(req.output_token_ids),
                    end_token_ids=req.held_end_ids,
                    lora=req.lora,
                )
            )
            req.on_worker = True
            self._mark_scheduled(out, req, num_new)
            budget -= num_new

    def _choose_victims(self, out: SchedulerOutput, room: Room) -> list[tuple[Request, str]] | None:
        if not self._preempts_for_room:
            return None
        return choose_victims(
            room,
            self.running,
            self.waiting,
            self.config.preemption_quantum,
            self.kv,
            out.step_input.num_scheduled_tokens,
        )

    def _preempt_victims(
        self, out: SchedulerOutput, victims: list[tuple[Request, str]], budget: int
    ) -> int:
        """Preempt the victims that make room for a waiting request; returns the budget
        with their tokens of this step back in it."""
        scheduled = out.step_input.num_scheduled_tokens
        for victim, cause in victims:
            num_tokens = scheduled.pop(victim.req_id, 0)
            if num_tokens:  # out of this step's batch: the worker is told to drop it instead
                budget += num_tokens
                out.step_input.spec_token_ids.pop(victim.req_id, None)
                out.step_input.num_draft_tokens.pop(victim.req_id, None)
                out.scheduled.remove(victim)
                running = out.step_input.running
                running[:] = [r for r in running if r.req_id != victim.req_id]
            self.running.remove(victim)
            self._preempt(victim, cause)
            out.num_preempted += 1
        return budget

    def _end_missed_deadlines(self, out: SchedulerOutput, now: float) -> None:
        # Predicted misses only while the step time is being measured (scheduler/deadlines.py).
        contended = self._batch_limited or len(self.running) >= self.config.max_num_seqs
        for req, why in self._deadlines.due(now, bool(self.running), contended):
            if not req.is_finished:
                self.finish_requests(
                    [req],
                    RequestStatus.FINISHED_DEADLINE,
                    f"ended: cannot finish by its deadline ({why})",
                )
                out.ended.append(req)

    @staticmethod
    def _mark_scheduled(out: SchedulerOutput, req: Request, num_new: int) -> None:
        req.num_sent_tokens = req.num_tokens
        req.num_sent_blocks = len(req.block_ids)
        out.step_input.num_scheduled_tokens[req.req_id] = num_new
        out.scheduled.append(req)

    def update(
        self,
        sched_out: SchedulerOutput,
        step_out: StepOutput,
        scan_text: TextScanner | None = None,
    ) -> list[Request]:
        """Advance every scheduled request by what the worker computed and sampled, and
        finish those that stopped. Returns the requests that gained tokens or finished."""
        num_scheduled = sched_out.step_input.num_scheduled_tokens
        find_row = output_row_finder(step_out.req_ids)
        changed: list[Request] = []
        num_finished = 0
        for k, req in enumerate(sched_out.scheduled):
            if req.status is not RUNNING:
                continue  # finished or preempted since it was scheduled
            if step_out.errors and req.req_id in step_out.errors:
                # Failed alone (non-finite logits): nothing of this step is kept, so no block
                # it computed joins the prefix cache; the others in the step go on.
                self._finish(req, RequestStatus.FINISHED_ERROR, step_out.errors[req.req_id])
                num_finished += 1
                changed.append(req)
                continue
            proposed = verified_proposals(sched_out.step_input, step_out, req.req_id)
            if proposed is None:  # a verified step advances by what was accepted, below
                advance_computed(req, num_scheduled[req.req_id], self.kv)
            if step_out.prompt_logprobs and req.prompt_logprobs is not None:
                add_prompt_logprobs(req, step_out.prompt_logprobs.get(req.req_id))
            row = find_row(k, req.req_id)
            error = None
            if row is not None and step_out.sampled_token_ids[row]:
                num_before = len(req.output_token_ids)
                if proposed is not None and self.speculator is not None:
                    status, error = self.speculator.apply_verified(
                        req, step_out, row, proposed, self.kv, scan_text
                    )
                else:
                    status = append_output(req, step_out, row, self.max_model_len)
                if scan_text is not None and error is None:
                    status, error = scan_for_stop_string(req, status, scan_text, self.max_model_len)
                if req.matcher is not None and (status is None or req.matcher.is_error()):
                    error = advance_matcher(req, num_before)
                    status = RequestStatus.FINISHED_ERROR if error else status
            elif proposed is not None or req.num_computed_tokens >= req.num_tokens:
                # Everything computed but nothing sampled: the request would never run again.
                status, error = RequestStatus.FINISHED_ERROR, "the worker sampled no token"
            else:
                continue  # mid-prefill
            if status is not None:
                self._finish(req, status, error)
                num_finished += 1
            changed.append(req)
        if num_finished:
            self.running = [req for req in self.running if req.status is RUNNING]
        return changed

    # -- finishing ------------------------------------------------------------------------

    def abort_request(self, req_id: str) -> Request | None:
        """Finish a request as aborted and free its blocks; None if it is not live."""
        req = self.requests.get(req_id)
        if req is None:
            return None
        self.finish_requests([req], RequestStatus.FINISHED_ABORTED)
        return req

    def finish_requests(
        self, reqs: list[Request], status: RequestStatus, error: str | None = None
    ) -> None:
        """Finish requests from outside `update` (aborts, errors)."""
        any_running = False
        for req in reqs:
            if req.is_finished:
                continue
            if req.status is RUNNING:
                any_running = True
            else:
                self.waiting.remove(req)
            self._finish(req, status, error)
        if any_running:
            self.running = [req for req in self.running if req.status is RUNNING]

    def fail_step(self, sched_out: SchedulerOutput, error: str) -> list[Request]:
        """The worker failed this step: fail every request it was running."""
        failed = [req for req in sched_out.scheduled if not req.is_finished]
        self.finish_requests(failed, RequestStatus.FINISHED_ERROR, error)
        return failed

    def worker_lost(self, error: str, only_on_worker: bool) -> list[Request]:
        """The worker's state is gone (unreachable, or a new session): fail the requests it
        held (`only_on_worker`) or every unfinished one, as unavailable, and forget what it
        was to drop and which prefixes its cache held. Returns the failed requests."""
        failed = [
            req
            for req in self.requests.values()
            if not req.is_finished and (req.on_worker or not only_on_worker)
        ]
        for req in failed:
            req.unavailable = True
        self.finish_requests(failed, RequestStatus.FINISHED_ERROR, error)
        self._finished_req_ids.clear()
        self.kv.pool.reset_prefix_cache()
        return failed

    def _finish(self, req: Request, status: RequestStatus, error: str | None = None) -> None:
        """Release everything a request holds. The caller removes it from `running`."""
        usage = req.tenant_usage
        if req.status is RUNNING:
            usage.num_running -= 1
        req.finish(status, error)
        usage.num_unfinished -= 1
        if req.deadline is not None:
            self._count_deadline(req, status)
        self.kv.free(req)
        self._drop_from_worker(req)
        self.requests.pop(req.req_id, None)

    def _count_deadline(self, req: Request, status: RequestStatus) -> None:
        """Met: a natural end by the deadline. Missed: ended for it, or ended after it."""
        late = status is RequestStatus.FINISHED_DEADLINE or self.clock() > req.deadline
        if late:
            req.tenant_usage.num_deadlines_missed += 1
        elif status in NATURAL_ENDS:
            req.tenant_usage.num_deadlines_met += 1

    def _preempt(self, req: Request, cause: str) -> None:
        """Recompute, not swap: give up the blocks (full ones stay in the prefix cache) and
        wait to be admitted again. The caller has taken it out of `running`."""
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
        req.preemptions[cause] = req.preemptions.get(cause, 0) + 1
        usage = req.tenant_usage
        usage.num_running -= 1
        usage.preemptions[cause] = usage.preemptions.get(cause, 0) + 1
        self.num_preemptions += 1
        self._drop_from_worker(req)
        self.waiting.add(req)

    def _drop_from_worker(self, req: Request) -> None:
        """The next step tells the worker to forget the request; if it comes back, it is
        sent whole again."""
        if req.on_worker:
            self._finished_req_ids[req.req_id] = None
            req.on_worker = False
        req.num_sent_tokens = 0
        req.num_sent_blocks = 0

    # -- state ----------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.requests) or bool(self._finished_req_ids)
