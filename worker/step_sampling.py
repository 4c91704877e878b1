"""One step's sampling and scoring over the logits the model computed for it.

Logits rows follow the batch (decodes first); a request samples from its `sample_row` and an
echo request also scores its prompt rows. Structured output's allowed-token masks apply first,
in place, to the rows they name. The rows are sampled in their own order, with no copy of the
logits unless some rows must be shaped (penalties and logit biases, then stop tokens masked
before `min_tokens`), and when any request wants logprobs, one log-softmax covers every row,
over the raw logits (masked where a grammar constrains the row). The sampled tokens and
their logprobs come back to the host in one copy, the step's one wait for a GPU, with a flag
per row saying whether its logits were finite: a request with a NaN or infinite row fails
alone (StepOutput.errors), whatever else shares the step.
"""

from __future__ import annotations

import torch

from contract.step import StepOutput, TokenMasks
from worker.device_io import to_device, to_host_lists
from worker.penalties import PenaltyTable
from worker.sampler import (
    SamplingRows,
    TokenLogprobs,
    greedy_and_finite,
    sample,
    token_logprobs,
)
from worker.step_batch import LogitsPlan, RequestState
from worker.step_output import HostScores, assemble_output
from worker.token_masks import apply_token_masks


def sample_and_score(
    scheduled: list[tuple[RequestState, int]],
    plans: list[LogitsPlan],
    logits: torch.Tensor,  # [num_rows, vocab] float32
    uniforms: dict[int, float],  # sample row -> its random number in [0, 1)
    penalties: PenaltyTable | None = None,  # the rows of requests with penalties or biases
    token_masks: TokenMasks | None = None,  # structured output's allowed tokens, this step
) -> StepOutput:
    device = logits.device
    by_row = sorted(
        (plan.sample_row + j, state)
        for (state, _), plan in zip(scheduled, plans, strict=True)
        if plan.sample_row is not None
        for j in range(1 + plan.num_proposed_rows)  # speculative: one row per proposal too
    )
    rows = [row for row, _ in by_row]
    states = [state for _, state in by_row]
    # Without echo rows every logits row is a sample row, in order: sample them in place.
    in_place = len(rows) == logits.shape[0]
    penalised = [i for i, s in enumerate(states) if s.penalty_row is not None]
    masked = _stop_mask(states, device)
    # One pass over the raw logits: a row's sum is finite only when every logit is (or when
    # finite logits overflow float32, which is no less broken). It comes back with the tokens.
    # Where nothing reshapes the rows sampled, the same pass finds the greedy tokens.
    unshaped = in_place and token_masks is None and not penalised and masked is None
    if unshaped:
        greedy, finite = greedy_and_finite(logits)
    else:
        greedy, finite = None, torch.isfinite(logits.sum(dim=-1))
    if token_masks is not None:
        # Masked in the raw logits, before all else: logprobs are then over allowed tokens.
        row_of = {state.req_id: row for row, state in by_row}
        apply_token_masks(logits, [row_of[r] for r in token_masks.req_ids], token_masks)
    sample_logits = logits if in_place else logits.index_select(0, _long(rows, device))
    if in_place and (penalised or masked is not None):
        sample_logits = sample_logits.clone()  # the raw scores logprobs come from stay as they are
    if penalised and penalties is not None:
        penalty_rows = [states[i].penalty_row for i in penalised]
        penalties.apply(
            sample_logits, penalised, penalty_rows, [states[i].sampling for i in penalised]
        )
    if masked is not None:
        sample_logits[masked] = float("-inf")  # a Python scalar: nothing to copy to a GPU
    params = SamplingRows([s.sampling for s in states], [uniforms[row] for row in rows])
    tokens = sample(sample_logits, params, greedy)
    if penalised and penalties is not None:
        penalties.record(penalty_rows, tokens.index_select(0, _long(penalised, device)))
    found = _logprobs(scheduled, plans, logits, rows, tokens)
    if found is None:
        token_list, finite_rows = to_host_lists(tokens, finite)
        scores = None
    else:
        token_list, finite_rows, logprobs, top_ids, top_logprobs = to_host_lists(
            tokens, finite, found.logprobs, found.top_ids, found.top_logprobs
        )
        scores = HostScores(logprobs=logprobs, top_ids=top_ids, top_logprobs=top_logprobs)
    tokens_by_row = dict(zip(rows, token_list, strict=True))
    return assemble_output(scheduled, plans, tokens_by_row, scores, finite_rows)


def _stop_mask(
    states: list[RequestState], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(rows, token ids) of the stop tokens that rows may not sample yet (min_tokens)."""
    rows: list[int] = []
    token_ids: list[int] = []
    for row, state in enumerate(states):
        num_output = len(state.token_ids) - state.num_prompt_tokens
        if num_output < state.sampling.min_tokens and state.end_token_ids:
            rows.extend([row] * len(state.end_token_ids))
            token_ids.extend(state.end_token_ids)
    return (_long(rows, device), _long(token_ids, device)) if rows else None


def _logprobs(
    scheduled: list[tuple[RequestState, int]],
    plans: list[LogitsPlan],
    logits: torch.Tensor,
    sample_rows: list[int],
    tokens: torch.Tensor,
) -> TokenLogprobs | None:
    """Logprobs of every logits row when any request asked: a sample row scores its sampled
    token, echo row p the prompt token p + 1."""
    k = max(state.sampling.top_logprobs for state, _ in scheduled)
    if not k and not any(s.sampling.logprobs or s.sampling.echo for s, _ in scheduled):
        return None
    device = logits.device
    targets = [0] * logits.shape[0]
    for (state, _), plan in zip(scheduled, plans, strict=True):
        if plan.num_echo_scored:
            start = state.num_computed + 1
            first = plan.echo_first_row
            targets[first : first + plan.num_echo_scored] = state.token_ids[
                start : start + plan.num_echo_scored
            ]
    target_ids = _long(targets, device).index_copy_(0, _long(sample_rows, device), tokens)
    return token_logprobs(logits, target_ids, k)


def _long(values: list[int], device: torch.device) -> torch.Tensor:
    return to_device(values, torch.long, device)
