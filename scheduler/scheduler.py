"""Who runs this step, and how many tokens each gets.

There is no prefill phase and no decode phase. Each request has `num_tokens` (prompt plus
output so far) and `num_computed_tokens` (tokens whose K/V are cached); a step hands out
tokens so that the second catches up with the first, under a token budget per step
(`max_num_batched_tokens`) and a cap on running requests (`max_num_seqs`):

1. Running requests first, most important first: a decode costs 1 token, an unfinished
   prefill gets its next chunk (at most `long_prefill_threshold` tokens, and never so much
   that a later running request would find no token left: decodes are never stalled).
2. A request whose next tokens need a block when none is free preempts the least important
   running request (the last in running order), possibly itself: its blocks are freed and
   it waits to be recomputed, from whatever its prefix still has in the cache.
3. Then waiting requests, in the order the queue policy picks, while budget, blocks and
   `max_num_seqs` allow; a prefix-cache hit counts as computed.

`update()` is the one place where request state advances after the worker ran.
"""

from __future__ import annotations

import bisect

from scheduler.errors import CapacityError
from scheduler.kv_cache_manager import KVCacheManager
from scheduler.queue_policy import create_queue_policy
from scheduler.request import Request, RequestStatus, TenantUsage
from scheduler.scheduler_config import SchedulerConfig, SchedulerOutput
from worker.step import NewRequest, PromptLogprobs, RunningRequest, StepInput, StepOutput

__all__ = ["Scheduler", "SchedulerConfig", "SchedulerOutput"]

RUNNING = RequestStatus.RUNNING


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.kv = KVCacheManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting = create_queue_policy(config.queue_policy)
        self._running_key = self.waiting.running_key
        self.running: list[Request] = []  # sorted by the policy's running key
        self.requests: dict[str, Request] = {}  # every unfinished request
        self.tenant_usage: dict[str, TenantUsage] = {}
        self.num_preemptions = 0
        self._next_arrival_seq = 0
        # The worker drops these at the next step; a req_id here is not re-sent before then.
        self._finished_req_ids: dict[str, None] = {}

    # -- admission ------------------------------------------------------------------------

    def check_fits(self, num_prompt_tokens: int, max_tokens: int) -> None:
        """Refuse what could never run: over the model length, or bigger than the cache."""
        total = num_prompt_tokens + max_tokens
        if total > self.config.max_model_len:
            raise ValueError(
                f"prompt ({num_prompt_tokens} tokens) + max_tokens ({max_tokens}) must be <= "
                f"the maximum model length ({self.config.max_model_len}), got {total}"
            )
        # The last generated token is never computed, so it needs no slot.
        num_blocks = self.kv.blocks_needed(total - 1)
        if num_blocks > self.config.num_blocks:
            raise CapacityError(
                f"prompt + max_tokens need {num_blocks} KV blocks, the cache has "
                f"{self.config.num_blocks}"
            )

    def add_request(self, req: Request) -> None:
        if req.req_id in self.requests:
            raise ValueError(f"req_id {req.req_id!r} is already in use")
        self.check_fits(len(req.prompt_token_ids), req.params.max_tokens)
        req.arrival_seq = self._next_arrival_seq
        self._next_arrival_seq += 1
        usage = self.tenant_usage.get(req.tenant)
        if usage is None:
            usage = self.tenant_usage[req.tenant] = TenantUsage()
        req.tenant_usage = usage
        req.status = RequestStatus.WAITING
        self.requests[req.req_id] = req
        self.waiting.add(req)

    # -- one step -------------------------------------------------------------------------

    def schedule(self) -> SchedulerOutput:
        cfg = self.config
        kv = self.kv
        bs = cfg.block_size
        threshold = cfg.long_prefill_threshold
        budget = cfg.max_num_batched_tokens
        new_reqs: list[NewRequest] = []
        running_reqs: list[RunningRequest] = []
        num_scheduled: dict[str, int] = {}
        scheduled: list[Request] = []
        num_preempted = 0

        running = self.running
        # Preemption pops victims off the end of `running` while this loop walks it from the
        # front; a list iterator stops at the list's current length, so that is safe.
        for i, req in enumerate(running):
            num_new = len(req.all_token_ids) - req.num_computed_tokens
            if num_new != 1:
                # Leave one token for each running request after this one.
                num_new = min(num_new, threshold, budget - (len(running) - i - 1))
                if num_new <= 0:
                    continue
            block_ids = req.block_ids
            if req.num_computed_tokens + num_new > len(block_ids) * bs:
                while not kv.allocate_slots(req, num_new):
                    victim = running.pop()
                    self._preempt(victim)
                    num_preempted += 1
                    if victim is req:
                        break
                if req.status is not RUNNING:
                    break  # it preempted itself, the last running request
                block_ids = req.block_ids
            req_id = req.req_id
            all_ids = req.all_token_ids
            running_reqs.append(
                RunningRequest(
                    req_id, all_ids[req.num_sent_tokens :], block_ids[req.num_sent_blocks :]
                )
            )
            req.num_sent_tokens = len(all_ids)
            req.num_sent_blocks = len(block_ids)
            num_scheduled[req_id] = num_new
            scheduled.append(req)
            budget -= num_new

        # Admit waiting requests, unless blocks just ran out (they would preempt each other).
        waiting = self.waiting
        while not num_preempted and budget > 0 and len(waiting) and len(running) < cfg.max_num_seqs:
            req = waiting.peek()
            if req.req_id in self._finished_req_ids:
                break  # the worker drops its old state first, at this coming step
            cached = kv.find_cached_prefix(req)
            num_new = min(len(req.all_token_ids) - len(cached) * bs, threshold, budget)
            if not kv.allocate_slots(req, num_new, cached):
                break
            waiting.pop()
            req.status = RUNNING
            if req.num_cached_prompt_tokens < 0:  # first admission: report its cache hit
                num_prompt = len(req.prompt_token_ids)
                req.num_cached_prompt_tokens = min(req.num_computed_tokens, num_prompt)
            bisect.insort(running, req, key=self._running_key)
            new_reqs.append(
                NewRequest(
                    req.req_id,
                    list(req.all_token_ids),
                    list(req.block_ids),
                    req.options,
                    req.num_computed_tokens,
                    num_output_tokens=len(req.output_token_ids),
                )
            )
            req.on_worker = True
            req.num_sent_tokens = len(req.all_token_ids)
            req.num_sent_blocks = len(req.block_ids)
            num_scheduled[req.req_id] = num_new
            scheduled.append(req)
            budget -= num_new

        finished_req_ids = list(self._finished_req_ids)
        self._finished_req_ids.clear()
        step_input = StepInput(new_reqs, running_reqs, num_scheduled, finished_req_ids)
        return SchedulerOutput(step_input, scheduled, num_preempted)

    def update(self, sched_out: SchedulerOutput, step_out: StepOutput) -> list[Request]:
        """Advance every scheduled request by what the worker computed and sampled. Returns
        the requests that gained tokens or finished."""
        kv = self.kv
        bs = self.config.block_size
        caching = self.config.enable_prefix_caching
        max_model_len = self.config.max_model_len
        num_scheduled = sched_out.step_input.num_scheduled_tokens
        out_req_ids = step_out.req_ids
        num_out = len(out_req_ids)
        index: dict[str, int] | None = None  # built only if the worker changed the order
        sampled_ids = step_out.sampled_token_ids
        logprobs = step_out.logprobs
        top_logprobs = step_out.top_logprobs
        prompt_logprobs = step_out.prompt_logprobs
        changed: list[Request] = []
        num_finished = 0
        for k, req in enumerate(sched_out.scheduled):
            if req.status is not RUNNING:
                continue  # finished or preempted since it was scheduled
            req_id = req.req_id
            num_new = num_scheduled[req_id]
            num_prompt = len(req.prompt_token_ids)
            if req.num_computed_tokens < num_prompt:  # a prompt chunk (recomputed ones count)
                num_prompt_new = min(num_new, num_prompt - req.num_computed_tokens)
                req.tenant_usage.num_input_tokens += num_prompt_new
            req.num_computed_tokens += num_new
            if caching and req.num_computed_tokens // bs > req.num_cached_blocks:
                kv.cache_full_blocks(req)
            if prompt_logprobs and req.prompt_logprobs is not None:
                self._add_prompt_logprobs(req, prompt_logprobs.get(req_id))
            if k < num_out and out_req_ids[k] == req_id:
                i: int | None = k
            else:
                if index is None:
                    index = {rid: j for j, rid in enumerate(out_req_ids)}
                i = index.get(req_id)
            new_ids = sampled_ids[i] if i is not None else ()
            if not new_ids:
                if req.num_computed_tokens >= len(req.all_token_ids):
                    # Everything computed but nothing sampled: the request would never run again.
                    self._finish(req, RequestStatus.FINISHED_ERROR, "the worker sampled no token")
                    num_finished += 1
                    changed.append(req)
                continue
            req.tenant_usage.num_output_tokens += len(new_ids)
            if logprobs and logprobs[i]:
                req.logprobs.extend(logprobs[i])
            if top_logprobs and top_logprobs[i]:
                req.top_logprobs.extend(top_logprobs[i])
            output_ids = req.output_token_ids
            params = req.params
            for token_id in new_ids:
                req.all_token_ids.append(token_id)
                output_ids.append(token_id)
                num_output = len(output_ids)
                if (
                    token_id == req.eos_stop_id or token_id in req.stop_token_ids
                ) and num_output >= params.min_tokens:
                    status = RequestStatus.FINISHED_STOPPED
                elif num_output >= params.max_tokens or len(req.all_token_ids) >= max_model_len:
                    status = RequestStatus.FINISHED_LENGTH
                else:
                    continue
                self._finish(req, status)
                num_finished += 1
                break
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
        """Finish requests from outside `update` (stop strings, aborts, errors)."""
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

    def _finish(self, req: Request, status: RequestStatus, error: str | None = None) -> None:
        """Release everything a request holds. The caller removes it from `running`."""
        req.status = status
        req.error = error
        self.kv.free(req)
        self._drop_from_worker(req)
        self.requests.pop(req.req_id, None)

    def _preempt(self, req: Request) -> None:
        """Recompute, not swap: give up the blocks (full ones stay in the prefix cache) and
        wait to be admitted again. The caller has taken it out of `running`."""
        self.kv.free(req)
        req.num_computed_tokens = 0
        req.status = RequestStatus.PREEMPTED
        req.num_preemptions += 1
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

    @staticmethod
    def _add_prompt_logprobs(req: Request, chunk: PromptLogprobs | None) -> None:
        """Place one chunk's prompt logprobs by position; positions already filled (seen
        again after a resume) keep their first value."""
        if chunk is None:
            return
        logprobs = req.prompt_logprobs
        top = req.prompt_top_logprobs
        num_prompt = len(logprobs)
        for offset, value in enumerate(chunk.logprobs):
            pos = chunk.start_position + offset
            if pos >= num_prompt:
                break
            if logprobs[pos] is None:
                logprobs[pos] = value
                if top is not None and chunk.top_logprobs is not None:
                    top[pos] = chunk.top_logprobs[offset]

    # -- state ----------------------------------------------------------------------------

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished(self) -> bool:
        return bool(self.requests) or bool(self._finished_req_ids)
