"""Turn the sampled tokens and logprobs of one step (on the host) into a StepOutput."""

from __future__ import annotations

import math
from dataclasses import dataclass

from contract.step import PromptLogprobs, StepOutput
from worker.speculative import accepted_tokens
from worker.step_batch import LogitsPlan, RequestState

NON_FINITE_LOGITS = "the model's logits for this request are not finite (NaN or inf)"


@dataclass(slots=True)
class HostScores:
    """Logprobs of every logits row of the step (sample rows and echo rows alike)."""

    logprobs: list[float]
    top_ids: list[list[int]]  # best first, as many as the largest top_logprobs asked
    top_logprobs: list[list[float]]

    def top(self, row: int, k: int) -> list[tuple[int, float]]:
        """The k best of the row; fewer where a grammar's mask left fewer tokens possible."""
        pairs = zip(self.top_ids[row][:k], self.top_logprobs[row][:k], strict=True)
        return [(token_id, logprob) for token_id, logprob in pairs if logprob != -math.inf]


def assemble_output(
    scheduled: list[tuple[RequestState, int]],
    plans: list[LogitsPlan],
    tokens_by_row: dict[int, int],  # sample row -> the token sampled from it
    scores: HostScores | None,  # None when no request asked for logprobs
    finite_rows: list[bool],  # logits row -> whether every logit in it is finite
) -> StepOutput:
    out = StepOutput()
    for (state, _), plan in zip(scheduled, plans, strict=True):
        opts = state.sampling
        out.req_ids.append(state.req_id)
        tokens: list[int] = []
        logprobs: list[float] = []
        top: list[list[tuple[int, float]]] = []
        row = plan.sample_row
        if not _rows_finite(plan, finite_rows):
            # Nothing drawn from such a row means anything: the request fails, alone.
            out.errors[state.req_id] = NON_FINITE_LOGITS
            out.sampled_token_ids.append(tokens)
            out.logprobs.append(logprobs)
            out.top_logprobs.append(top)
            continue
        if row is not None:
            if plan.num_proposed_rows:
                proposed = state.token_ids[-plan.num_proposed_rows :]
                drawn = [tokens_by_row[row + j] for j in range(1 + plan.num_proposed_rows)]
                tokens.extend(accepted_tokens(drawn, proposed))
            else:
                tokens.append(tokens_by_row[row])
            rows = range(row, row + len(tokens))
            if scores is not None and opts.logprobs:
                logprobs.extend(scores.logprobs[r] for r in rows)
            if scores is not None and opts.top_logprobs:
                top.extend(scores.top(r, opts.top_logprobs) for r in rows)
        out.sampled_token_ids.append(tokens)
        out.logprobs.append(logprobs)
        out.top_logprobs.append(top)
        if plan.num_echo_scored and scores is not None:
            rows = range(plan.echo_first_row, plan.echo_first_row + plan.num_echo_scored)
            out.prompt_logprobs[state.req_id] = PromptLogprobs(
                start_position=state.num_computed + 1,
                logprobs=scores.logprobs[rows.start : rows.stop],
                top_logprobs=[scores.top(r, opts.top_logprobs) for r in rows]
                if opts.top_logprobs
                else None,
            )
    return out


def _rows_finite(plan: LogitsPlan, finite_rows: list[bool]) -> bool:
    """Whether the request's sample row and echo rows are all finite."""
    if plan.sample_row is not None and not all(
        finite_rows[plan.sample_row : plan.sample_row + 1 + plan.num_proposed_rows]
    ):
        return False
    first = plan.echo_first_row
    return all(finite_rows[first : first + plan.num_echo_scored]) if plan.num_echo_scored else True
