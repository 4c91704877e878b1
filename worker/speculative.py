"""Speculative decoding, the worker's side: proposed tokens scored in the step's one forward
pass, verified, and forgotten.

A request sent `spec_token_ids` [d1..dk] computes k + 1 positions this step: its last known
token and the proposals. Row j's logits give the model's distribution p_j of the token after
position j, and each row draws its own token t_j from p_j, with the uniform number of that
token's position (seeded: from (seed, position), so independent of the batch). The output
is t_0..t_a, where a is the length of the longest prefix with t_j == d_{j+1}: greedy rows
accept the longest prefix matching the model's argmax; at the first mismatch t_a is the
correction, and when all k match it is a bonus token.

For sampled rows this is rejection sampling (Leviathan et al., 2023) for a proposer that puts
all its mass on one token, as prompt lookup does: d is accepted with probability
min(1, p(d)/q(d)) = p(d), exactly the chance that t drawn from p equals d; on rejection the
token comes from the residual max(0, p - q) normalised, which is p without d, exactly the law
of t given t != d. So every output token follows the model's own distribution, and with the
same numbers a seeded request draws the same tokens with speculation as without it.
Logprobs are those of the rows, the model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the step check imports this module and no torch
    from worker.step_batch import RequestState


def attach_proposals(
    requests: Mapping[str, RequestState], spec_token_ids: Mapping[str, list[int]]
) -> None:
    """Put each request's proposals after its known tokens for this step."""
    for req_id, proposed in spec_token_ids.items():
        state = requests[req_id]
        state.token_ids.extend(proposed)
        state.num_proposed = len(proposed)


def detach_proposals(state: RequestState) -> None:
    """After the step: forget the proposals and count only the input token as computed;
    the accepted ones are counted when the scheduler sends them back (`take_verdict`)."""
    del state.token_ids[-state.num_proposed :]
    state.num_proposed = 0
    state.num_computed += 1
    state.awaiting_verdict = True


def take_verdict(state: RequestState, new_token_ids: list[int], block_size: int) -> None:
    """The next step brings the last step's answer back, accepted proposals first: their
    K/V were written then, so they count as computed; blocks past those computed tokens
    held only rejected ones, and the scheduler has freed them."""
    if not state.awaiting_verdict:
        return
    state.awaiting_verdict = False
    state.num_computed += max(0, len(new_token_ids) - 1)
    # The draft's K/V past the accepted tokens are for rejected ones (worker/draft_model.py).
    state.draft_computed = min(state.draft_computed, state.num_computed)
    num_blocks = -(-state.num_computed // block_size)
    del state.block_ids[num_blocks:]


def verdict_preview(state: RequestState, num_new_tokens: int, block_size: int) -> tuple[int, int]:
    """(num_computed, num_blocks) once `take_verdict` applies, for the step check."""
    if not state.awaiting_verdict:
        return state.num_computed, len(state.block_ids)
    num_computed = state.num_computed + max(0, num_new_tokens - 1)
    return num_computed, min(len(state.block_ids), -(-num_computed // block_size))


def accepted_tokens(row_tokens: list[int], proposed: list[int]) -> list[int]:
    """The tokens drawn at the k + 1 rows and the k proposals -> the verified output."""
    num_accepted = 0
    while num_accepted < len(proposed) and row_tokens[num_accepted] == proposed[num_accepted]:
        num_accepted += 1
    return row_tokens[: num_accepted + 1]
