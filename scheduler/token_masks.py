"""Structured output in the step loop: each step's allowed tokens, and each request's matcher
advanced by what it sampled.

Every constrained request has its own grammar matcher (scheduler/grammars.py), which the
scheduler owns like the rest of its state. `step_token_masks` runs at the end of
`Scheduler.schedule()`: for every constrained request that samples this step (its scheduled
tokens reach its last known one), its matcher writes the allowed tokens into one row of a
packed bit matrix (llguidance drops the GIL while it works). The worker applies the rows to
the logits before it samples (worker/token_masks.py).

`advance_matchers` runs in `Scheduler.update()`, the one place request state advances: each
token the request kept is fed to its matcher. A preempted request keeps its output and so its
matcher's state, which is exactly what its recompute resumes from; tokens the scheduler drops
(a request finished or preempted after it was scheduled) never reach the matcher.
"""

from __future__ import annotations

from contract.step import StepInput, TokenMasks
from scheduler.request import Request, RequestStatus


def step_token_masks(scheduled: list[Request], step: StepInput) -> TokenMasks | None:
    """The masks of the constrained requests that sample in this step, or None."""
    sampling = [
        req
        for req in scheduled
        if req.matcher is not None
        and req.status is RequestStatus.RUNNING
        and req.num_computed_tokens + step.num_scheduled_tokens[req.req_id] == req.num_tokens
    ]
    if not sampling:
        return None
    import numpy as np
    from llguidance.numpy import fill_next_token_bitmask

    words = sampling[0].grammar.words_per_row
    bits = np.zeros((len(sampling), words), dtype=np.int32)
    # On this thread, row by row (each about 0.1 ms): llguidance's thread pool would be
    # faster alone, but its idle threads spin on the cores the forward pass then needs.
    for i, req in enumerate(sampling):
        fill_next_token_bitmask(req.matcher, bits, i)
        if req.matcher.is_error():  # over llguidance's per-step limit: it fails in update()
            row = bits[i].view(np.uint32)
            row[:] = 0
            for eos in req.eos_ids:  # a row the worker can draw from; the draw is dropped
                row[eos // 32] |= np.uint32(1 << (eos % 32))
    return TokenMasks([req.req_id for req in sampling], words, bits.tobytes())


def advance_matcher(req: Request, num_before: int) -> str | None:
    """Feed the request's matcher the output tokens after the first `num_before`; the error
    when one breaks its grammar (never, unless the worker ignored the mask)."""
    if req.matcher.is_error():
        return f"structured output failed: {req.matcher.get_error()[:600]}"
    new_ids = req.output_token_ids[num_before:]
    if req.matcher.consume_tokens(new_ids):
        return None
    return f"the sampled tokens {new_ids} break the request's structured output constraint"
