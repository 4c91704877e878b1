"""Speculative decoding, the scheduler's side: who speculates, how many tokens, and what a
verified step leaves behind.

A request in its decode phase gets up to `num_speculative_tokens` proposed tokens (the
proposer behind `Proposer`); it is then scheduled for 1 + k tokens, its last known token and
the proposals, which travel in `StepInput.spec_token_ids`. With `speculative=draft` the
worker's draft model proposes them (worker/draft_model.py): the scheduler sends only their
number, `StepInput.num_draft_tokens`, and reads them in `StepOutput.draft_token_ids`. Their
KV slots are allocated like any others, counted in the step's token budget. The worker scores
all 1 + k positions in one forward pass and answers the accepted proposals plus one token of
its own (the correction, or a bonus when all were accepted). `apply_verified` then counts as
computed only the input token and the accepted proposals, registers in the prefix cache only
blocks full of those, and frees blocks that held only rejected tokens (the draft model's K/V
in them too): the rejected K/V is never reachable.

Speculation is skipped, costing nothing:
- in a step with more than `speculative_max_batch` running requests (a large batch is
  compute-bound: verifying guesses costs throughput there);
- for a request whose acceptance fell under `speculative_min_acceptance` after
  `MIN_PROPOSED_TO_JUDGE` proposals (it stops for good);
- for a request whose logits are shaped by per-token state (penalties, logit biases, a
  structured-output constraint's mask) or that is still under `min_tokens`, where each
  proposed position would need its own shaping;
- when blocks are short: a request never preempts another for a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from contract.step import StepInput, StepOutput
from scheduler.kv_cache_manager import KVCacheManager
from scheduler.ngram_proposer import NgramProposer
from scheduler.request import Request, RequestStatus
from scheduler.step_results import TextScanner, advance_computed, scan_for_stop_string
from scheduler.stop import check_stop

if TYPE_CHECKING:
    from scheduler.config import SchedulerConfig

PROPOSERS = ("off", "ngram", "draft")
# The most running requests a step may have and still speculate, unless
# `speculative_max_batch` says: measured on SmolLM2 on a 2-core CPU (BENCHMARKS.md,
# "Speculative decoding: where the batch threshold sits"), prompt lookup gained 1.18x at 2
# streams and lost from 4 on; the draft model gained alone and lost from 2 streams on (its
# own steps come on top of the verification).
DEFAULT_MAX_BATCH = {"ngram": 2, "draft": 1}
MIN_PROPOSED_TO_JUDGE = 32


def verified_proposals(step_in: StepInput, step_out: StepOutput, req_id: str) -> list[int] | None:
    """The tokens a step verified after `req_id`'s last one: the scheduler's proposals, or its
    draft model's (none where it proposed none); None when the request did not speculate."""
    if req_id in step_in.num_draft_tokens:
        return step_out.draft_token_ids.get(req_id, [])
    return step_in.spec_token_ids.get(req_id)


class Proposer(Protocol):
    def propose(self, token_ids: list[int], k: int) -> list[int]:
        """Up to `k` tokens likely to follow `token_ids`."""
        ...


class Speculator:
    """Owned by the Scheduler when `speculative` is not off. With `draft`, the worker's draft
    model proposes (worker/draft_model.py): the scheduler only says how many tokens, and
    learns which from the step's output."""

    def __init__(self, config: SchedulerConfig, max_model_len: int) -> None:
        self.proposer: Proposer | None = NgramProposer() if config.speculative == "ngram" else None
        self.num_speculative_tokens = config.num_speculative_tokens
        configured = config.speculative_max_batch
        self.max_batch = DEFAULT_MAX_BATCH[config.speculative] if configured is None else configured
        self.min_acceptance = config.speculative_min_acceptance
        self.max_model_len = max_model_len
        self.num_proposed = 0  # every request's, since start
        self.num_accepted = 0

    @property
    def drafts(self) -> bool:
        """Whether the worker's draft model proposes (the scheduler proposes nothing)."""
        return self.proposer is None

    def num_to_propose(self, req: Request, room: int, num_running: int) -> int:
        """How many tokens may be proposed after `req`'s last token this step, at most
        `room`; 0 when it does not speculate now."""
        if num_running > self.max_batch or not self._eligible(req):
            return 0
        # The worker answers accepted + 1 tokens: leave room for that one within the limits.
        return max(0, min(
            self.num_speculative_tokens,
            room,
            req.params.max_tokens - len(req.output_token_ids) - 1,
            self.max_model_len - req.num_tokens - 1,
        ))  # fmt: skip

    def propose(self, req: Request, k: int) -> list[int]:
        """Up to `k` tokens to verify after `req`'s last token (the scheduler's proposer)."""
        assert self.proposer is not None, "the worker's draft model proposes"
        return self.proposer.propose(req.all_token_ids, k)

    def _eligible(self, req: Request) -> bool:
        params = req.params
        if params.shapes_logits or len(req.output_token_ids) < params.min_tokens:
            return False
        if req.matcher is not None:  # its mask is for the next position only
            return False
        proposed = req.num_spec_proposed
        return not (
            proposed >= MIN_PROPOSED_TO_JUDGE
            and req.num_spec_accepted < self.min_acceptance * proposed
        )

    def apply_verified(
        self,
        req: Request,
        step_out: StepOutput,
        row: int,
        proposed: list[int],
        kv: KVCacheManager,
        scan_text: TextScanner | None = None,
    ) -> tuple[RequestStatus | None, str | None]:
        """Apply a verified step to `req`: (finished status or None, error or None)."""
        sampled = step_out.sampled_token_ids[row]
        num_accepted = len(sampled) - 1
        if (
            not proposed
            or num_accepted > len(proposed)
            or sampled[:num_accepted] != proposed[:num_accepted]
        ):
            return RequestStatus.FINISHED_ERROR, (
                f"the worker answered {sampled} for the proposed tokens {proposed}"
            )
        num_before = len(req.output_token_ids)
        req.num_spec_proposed += len(proposed)
        req.num_spec_accepted += num_accepted
        self.num_proposed += len(proposed)
        self.num_accepted += num_accepted
        status, error = self._append(req, step_out, row, scan_text)
        num_appended = len(req.output_token_ids) - num_before
        # Computed: the input token and the accepted proposals that were kept (a stop among
        # them keeps no more). Their tokens are all appended by now, so the prefix cache
        # hashes known tokens only.
        advance_computed(req, 1 + min(num_accepted, num_appended), kv)
        kv.trim(req, req.num_computed_tokens)
        req.num_sent_blocks = min(req.num_sent_blocks, len(req.block_ids))
        return status, error

    def _append(
        self, req: Request, step_out: StepOutput, row: int, scan_text: TextScanner | None
    ) -> tuple[RequestStatus | None, str | None]:
        """Append the answered tokens one at a time, as plain decoding would have, up to the
        first that ends the request (EOS, a stop id or string, a length): no token, logprob
        or text after it is kept."""
        sampled = step_out.sampled_token_ids[row]
        logprobs = step_out.logprobs[row] if step_out.logprobs else []
        top = step_out.top_logprobs[row] if step_out.top_logprobs else []
        for j, token_id in enumerate(sampled):
            req.tenant_usage.charge_output(1)
            req.all_token_ids.append(token_id)
            req.output_token_ids.append(token_id)
            if logprobs:
                req.logprobs.append(logprobs[j])
            if top:
                req.top_logprobs.append(top[j])
            status = check_stop(req, self.max_model_len)
            if scan_text is not None and req.params.stop and j < len(sampled) - 1:
                # The last token is scanned by Scheduler.update, as any step's is.
                status, error = scan_for_stop_string(req, status, scan_text, self.max_model_len)
                if error is not None:
                    return status, error
            if status is not None:
                return status, None
        return None, None

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted / self.num_proposed if self.num_proposed else 0.0
