"""Whether a StepInput fits a worker's state, checked before any of it is applied.

The runner checks every step here first, whether it came from the engine in this process or
over worker.proto (where contract/step_proto.py has already checked what a message can get
wrong on its own, sampling settings included): a step that names an unknown request, a block
outside the cache, a token outside the vocabulary, or more tokens than a request has left is
refused as a whole with StepRejected, so a bad step never leaves the worker half-updated,
and an id out of range never reaches a device kernel (on CUDA, an out-of-range index is a
device-side assert that ends the process). No torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from contract.sampling import SamplingParams
from contract.step import StepInput, WorkerInfo
from worker.speculative import verdict_preview


class KnownRequest(Protocol):
    """What the check reads of the worker's state for one request (worker.step_batch's
    RequestState)."""

    token_ids: list[int]
    block_ids: list[int]
    num_computed: int
    num_prompt_tokens: int
    sampling: SamplingParams
    awaiting_verdict: bool  # a speculative step's answer is due in its next new tokens


@dataclass(slots=True)
class _Planned:
    num_tokens: int  # tokens known once the step's diff is applied
    num_blocks: int
    num_computed: int


class StepRejected(ValueError):
    """A step that does not fit the worker's state; nothing of it was applied."""


def check_step(step: StepInput, known: Mapping[str, KnownRequest], info: WorkerInfo) -> None:
    """StepRejected naming the request and what is wrong; the state is not touched."""
    finished = set(step.finished_req_ids)
    planned: dict[str, _Planned] = {}
    for new in step.new:
        if new.req_id in known and new.req_id not in finished:
            raise StepRejected(f"new request {new.req_id} is already on this worker")
        _check_tokens(new.req_id, new.prompt_token_ids, info.vocab_size)
        _check_tokens(new.req_id, new.sampling.stop_token_ids, info.vocab_size)
        _check_tokens(new.req_id, list(new.end_token_ids), info.vocab_size)
        _check_tokens(new.req_id, list(new.sampling.logit_bias), info.vocab_size)
        _check_blocks(new.req_id, new.block_ids, info.num_kv_blocks)
        planned[new.req_id] = _Planned(
            len(new.prompt_token_ids), len(new.block_ids), new.num_computed_tokens
        )
    for running in step.running:
        state = known.get(running.req_id)
        if state is None or running.req_id in finished:
            raise StepRejected(f"running request {running.req_id} is not on this worker")
        _check_tokens(running.req_id, running.new_token_ids, info.vocab_size)
        _check_blocks(running.req_id, running.new_block_ids, info.num_kv_blocks)
        num_computed, num_blocks = verdict_preview(
            state, len(running.new_token_ids), info.block_size
        )
        planned[running.req_id] = _Planned(
            len(state.token_ids) + len(running.new_token_ids),
            num_blocks + len(running.new_block_ids),
            num_computed,
        )
    for req_id, num_tokens in step.num_scheduled_tokens.items():
        plan = planned.get(req_id)
        if plan is None:
            state = known.get(req_id)
            if state is None or req_id in finished:
                raise StepRejected(f"request {req_id} is scheduled but not on this worker")
            num_computed, num_blocks = verdict_preview(state, 0, info.block_size)
            plan = _Planned(len(state.token_ids), num_blocks, num_computed)
            planned[req_id] = plan
        proposed = step.spec_token_ids.get(req_id, [])
        _check_tokens(req_id, proposed, info.vocab_size)
        num_proposed = len(proposed) + step.num_draft_tokens.get(req_id, 0)
        if num_proposed:
            _check_proposed(req_id, proposed, num_proposed, num_tokens, plan, step, known, info)
            plan.num_tokens += num_proposed
        _check_scheduled(req_id, num_tokens, plan, info)
    for req_id in [*step.spec_token_ids, *step.num_draft_tokens]:
        if req_id not in step.num_scheduled_tokens:
            raise StepRejected(f"request {req_id}: tokens proposed for an unscheduled request")
        if step.num_draft_tokens.get(req_id, 1) < 1:
            raise StepRejected(f"request {req_id}: draft tokens must be asked 1 or more")
    if step.token_masks is not None:
        _check_token_masks(step, planned, info.vocab_size)


def _check_token_masks(step: StepInput, planned: dict[str, _Planned], vocab_size: int) -> None:
    """Each mask row is a request that samples this step, as wide as the vocabulary, with
    at least one token allowed (a row allowing none leaves nothing to sample)."""
    masks = step.token_masks
    assert masks is not None
    words = (vocab_size + 31) // 32
    if masks.words_per_row != words:
        raise StepRejected(
            f"token masks must be {words} words wide (vocabulary {vocab_size}), got "
            f"{masks.words_per_row}"
        )
    if len(masks.bits) != len(masks.req_ids) * words * 4:
        raise StepRejected(f"token masks must hold {len(masks.req_ids)} rows of {words} words")
    empty = bytes(words * 4)
    for i, req_id in enumerate(masks.req_ids):
        plan = planned.get(req_id)
        num_scheduled = step.num_scheduled_tokens.get(req_id, 0)
        if plan is None or plan.num_computed + num_scheduled != plan.num_tokens:
            raise StepRejected(f"request {req_id} has a token mask but samples nothing this step")
        if masks.row(i) == empty:
            raise StepRejected(f"request {req_id}: its token mask allows no token")


def _check_scheduled(req_id: str, num_tokens: int, plan: _Planned, info: WorkerInfo) -> None:
    num_left = plan.num_tokens - plan.num_computed
    if not 0 < num_tokens <= num_left:
        raise StepRejected(
            f"request {req_id}: {num_tokens} tokens scheduled, {num_left} are left to compute"
        )
    context = plan.num_computed + num_tokens
    if context > info.max_seq_len:
        raise StepRejected(
            f"request {req_id}: {context} tokens exceed the model length {info.max_seq_len}"
        )
    if plan.num_blocks * info.block_size < context:
        raise StepRejected(
            f"request {req_id}: {plan.num_blocks} blocks of {info.block_size} cannot hold "
            f"{context} tokens"
        )


def _check_proposed(
    req_id: str,
    proposed: list[int],
    num_proposed: int,
    num_tokens: int,
    plan: _Planned,
    step: StepInput,
    known: Mapping[str, KnownRequest],
    info: WorkerInfo,
) -> None:
    """Proposals (the scheduler's `proposed`, or as many from the draft model) follow a
    decoding request's one new token, for sampling without per-token state
    (worker/speculative.py)."""
    num_drafted = num_proposed - len(proposed)
    if num_drafted and not info.draft_model:
        raise StepRejected(f"request {req_id}: draft tokens asked of a worker without a draft")
    if num_drafted and proposed:
        raise StepRejected(f"request {req_id}: draft tokens asked besides proposed tokens")
    if plan.num_tokens - plan.num_computed != 1 or num_tokens != 1 + num_proposed:
        raise StepRejected(
            f"request {req_id}: {num_proposed} proposed tokens need a decoding request "
            f"scheduled for {1 + num_proposed} tokens, got {num_tokens}"
        )
    new = next((r for r in step.new if r.req_id == req_id), None)
    sampling = new.sampling if new is not None else known[req_id].sampling
    num_prompt = (
        len(new.prompt_token_ids) - new.num_output_tokens
        if new is not None
        else known[req_id].num_prompt_tokens
    )
    if sampling.shapes_logits or plan.num_tokens - num_prompt < sampling.min_tokens:
        raise StepRejected(
            f"request {req_id}: tokens proposed for a request with penalties, logit biases "
            "or min_tokens still due"
        )


def _check_tokens(req_id: str, token_ids: list[int], vocab_size: int) -> None:
    if token_ids and not (min(token_ids) >= 0 and max(token_ids) < vocab_size):
        raise StepRejected(f"request {req_id}: token ids must be in [0, {vocab_size})")


def _check_blocks(req_id: str, block_ids: list[int], num_blocks: int) -> None:
    if block_ids and not (min(block_ids) >= 0 and max(block_ids) < num_blocks):
        raise StepRejected(f"request {req_id}: block ids must be in [0, {num_blocks})")
