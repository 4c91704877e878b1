"""What one worker step returned, applied to one request: sampled tokens, their logprobs,
and echo prompt logprobs. Helpers of `Scheduler.update`, which alone calls them."""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.log_text import loggable
from contract.step import PromptLogprobs, StepOutput
from scheduler.kv_cache_manager import KVCacheManager
from scheduler.request import Request, RequestStatus
from scheduler.stop import check_stop

logger = logging.getLogger("loom.scheduler")

# (request, final) -> whether a stop string now ends it: the output processor detokenizes
# the request's new tokens (flushing everything when `final`) and looks for its stop strings.
TextScanner = Callable[[Request, bool], bool]


def output_row_finder(req_ids: list[str]) -> Callable[[int, str], int | None]:
    """(k, req_id) -> the row of `req_id` in the worker's output. The worker answers in the
    order it was given, so row k is tried first; an index is built only if that fails."""
    index: dict[str, int] | None = None

    def find(k: int, req_id: str) -> int | None:
        nonlocal index
        if k < len(req_ids) and req_ids[k] == req_id:
            return k
        if index is None:
            index = {rid: j for j, rid in enumerate(req_ids)}
        return index.get(req_id)

    return find


def append_output(
    req: Request, step_out: StepOutput, row: int, max_model_len: int
) -> RequestStatus | None:
    """Append the tokens sampled for `req` (row `row`) and their logprobs, up to the first
    that stops it; returns its finished status, or None while it goes on."""
    new_ids = step_out.sampled_token_ids[row]
    req.tenant_usage.charge_output(len(new_ids))
    if step_out.logprobs and step_out.logprobs[row]:
        req.logprobs.extend(step_out.logprobs[row])
    if step_out.top_logprobs and step_out.top_logprobs[row]:
        req.top_logprobs.extend(step_out.top_logprobs[row])
    for token_id in new_ids:
        req.all_token_ids.append(token_id)
        req.output_token_ids.append(token_id)
        status = check_stop(req, max_model_len)
        if status is not None:
            return status
    return None


def add_prompt_logprobs(req: Request, chunk: PromptLogprobs | None) -> None:
    """Place one chunk's prompt logprobs by position; positions already filled (seen again
    after a resume) keep their first value."""
    if chunk is None:
        return
    logprobs = req.prompt_logprobs
    assert logprobs is not None  # an echo request
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


def advance_computed(req: Request, num_new: int, kv: KVCacheManager) -> None:
    """The worker computed `num_new` more tokens: charge the tenant for prompt tokens
    (recomputed ones count) and register newly full blocks in the prefix cache."""
    num_prompt = len(req.prompt_token_ids)
    if req.num_computed_tokens < num_prompt:
        req.tenant_usage.num_input_tokens += min(num_new, num_prompt - req.num_computed_tokens)
    req.num_computed_tokens += num_new
    if kv.enable_caching and req.num_computed_tokens // kv.block_size > req.num_cached_blocks:
        kv.cache_full_blocks(req)


def scan_for_stop_string(
    req: Request, status: RequestStatus | None, scan_text: TextScanner, max_model_len: int
) -> tuple[RequestStatus | None, str | None]:
    """Let the output processor look for stop strings in the new text: (status, error). A
    failure there fails only this request."""
    try:
        found = scan_text(req, status is not None)
    except Exception as exc:
        logger.exception("request %s failed while post-processing", loggable(req.req_id))
        return RequestStatus.FINISHED_ERROR, f"post-processing failed: {exc!r}"
    if found:
        return check_stop(req, max_model_len, stop_string_found=True), None
    return status, None
