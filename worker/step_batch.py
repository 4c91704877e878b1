"""Turn the scheduled requests of one step into the flat batch the model runs.

Only per-sequence work happens in Python; per-token indices (positions, cache slots) are
built with tensor ops on the target device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate, chain

import torch

from contract.sampling import SamplingParams
from contract.step import LoraRef, NewRequest
from worker.attention import AttentionMetadata
from worker.attention.backend import AttentionBackend
from worker.device_io import to_device


@dataclass(slots=True)
class RequestState:
    """What the worker keeps about a request between steps."""

    req_id: str
    token_ids: list[int]  # every token known: prompt, then fed-back outputs
    block_ids: list[int]  # logical block i -> physical block id
    sampling: SamplingParams
    num_computed: int  # tokens whose K/V are in the cache
    num_prompt_tokens: int  # token_ids[:num_prompt_tokens] is the prompt; the rest is output
    penalty_row: int | None = None  # its row of the PenaltyTable, when it asked for penalties
    # Ids it may not sample before min_tokens (NewRequest.end_token_ids).
    end_token_ids: tuple[int, ...] = ()
    lora: LoraRef | None = None  # the adapter it runs with; None: the base model
    # Speculative decoding: proposed tokens at the end of token_ids during this step only,
    # and whether the last step verified some (worker/speculative.py).
    num_proposed: int = 0
    awaiting_verdict: bool = False
    # Tokens whose K/V the draft model's cache holds (worker/draft_model.py), <= num_computed
    # once a verdict is taken.
    draft_computed: int = 0

    @classmethod
    def from_new(cls, new: NewRequest) -> RequestState:
        return cls(
            req_id=new.req_id,
            token_ids=list(new.prompt_token_ids),
            block_ids=list(new.block_ids),
            sampling=new.sampling,
            num_computed=new.num_computed_tokens,
            num_prompt_tokens=len(new.prompt_token_ids) - new.num_output_tokens,
            end_token_ids=new.end_token_ids,
            lora=new.lora,
        )


@dataclass(slots=True)
class LogitsPlan:
    """Which rows of the logits matrix belong to one scheduled request."""

    sample_row: int | None  # row whose logits give the next token; None mid-prefill
    echo_first_row: int  # echo only: row predicting prompt token num_computed + 1
    num_echo_scored: int  # prompt tokens scored this step (0 unless echo)
    # Speculative decoding: the rows after sample_row, one per proposed token, sampled too.
    num_proposed_rows: int = 0


@dataclass(slots=True)
class StepBatch:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn: AttentionMetadata
    logits_rows: torch.Tensor  # [num_logits] rows of the flat batch that need logits
    plans: list[LogitsPlan]  # one per scheduled request, in the order given
    # (first row, end row, lora_id): the runs of rows on one adapter; base-only rows in none
    lora_runs: list[tuple[int, int, int]] = field(default_factory=list)


def build_step_batch(
    scheduled: list[tuple[RequestState, int]],
    block_size: int,
    device: torch.device,
    backend: AttentionBackend,
) -> StepBatch:
    """`scheduled` pairs each request with the number of tokens it computes this step;
    `backend` is the attention backend that will run the step (it adds what it needs)."""
    # One-token sequences first: backends may treat the decodes as one batch. Within each,
    # by adapter, so each adapter's rows are one run (worker/lora_batch.py).
    order = sorted(
        range(len(scheduled)), key=lambda i: (scheduled[i][1] != 1, _lora_id(scheduled[i][0]))
    )
    seqs = [scheduled[i] for i in order]
    num_seqs = len(seqs)
    starts = [state.num_computed for state, _ in seqs]
    lens = [n for _, n in seqs]
    contexts = [s + n for s, n in zip(starts, lens, strict=True)]
    query_start_loc = [0, *accumulate(lens)]
    first_rows = query_start_loc[:-1]
    num_tokens = query_start_loc[-1]
    blocks_needed = [-(-c // block_size) for c in contexts]
    max_blocks = max(blocks_needed)

    def tensor(values: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
        return to_device(values, dtype, device)

    chunks = (st.token_ids[s : s + n] for (st, n), s in zip(seqs, starts, strict=True))
    input_ids = tensor(list(chain.from_iterable(chunks)))
    block_tables = tensor(
        [
            st.block_ids[:nb] + [0] * (max_blocks - nb)
            for (st, _), nb in zip(seqs, blocks_needed, strict=True)
        ],
        torch.int32,
    )  # [num_seqs, max_blocks]
    seq_of_token = torch.repeat_interleave(
        torch.arange(num_seqs, device=device), tensor(lens), output_size=num_tokens
    )  # [num_tokens]
    # position = row in the batch - first row of its sequence + tokens cached before
    row_to_position = tensor([s - r for s, r in zip(starts, first_rows, strict=True)])
    positions = torch.arange(num_tokens, device=device) + row_to_position[seq_of_token]
    # block_table [7, 2], block_size 16, position 20 -> slot 2 * 16 + 4 = 36
    slot_mapping = (
        block_tables[seq_of_token, positions // block_size].long() * block_size
        + positions % block_size
    )
    attn = AttentionMetadata(
        slot_mapping=slot_mapping,
        num_decodes=sum(1 for n in lens if n == 1),
        query_start_loc=tensor(query_start_loc, torch.int32),
        seq_lens=tensor(contexts, torch.int32),
        block_tables=block_tables,
        max_query_len=max(lens),
        max_seq_len=max(contexts),
        query_start_loc_host=query_start_loc,
        seq_lens_host=contexts,
        backend=backend,
    )
    backend.prepare(attn)
    logits_rows, plans = _logits_plans(seqs, first_rows, order)
    return StepBatch(
        input_ids=input_ids,
        positions=positions,
        attn=attn,
        logits_rows=tensor(logits_rows),
        plans=plans,
        lora_runs=_lora_runs(seqs, query_start_loc),
    )


def _lora_id(state: RequestState) -> int:
    return 0 if state.lora is None else state.lora.lora_id


def _lora_runs(
    seqs: list[tuple[RequestState, int]], query_start_loc: list[int]
) -> list[tuple[int, int, int]]:
    """Consecutive sequences on the same adapter merged into one run of rows."""
    runs: list[tuple[int, int, int]] = []
    for b, (state, _) in enumerate(seqs):
        lora_id = _lora_id(state)
        if not lora_id:
            continue
        start, end = query_start_loc[b], query_start_loc[b + 1]
        if runs and runs[-1][2] == lora_id and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], end, lora_id)
        else:
            runs.append((start, end, lora_id))
    return runs


def _logits_plans(
    seqs: list[tuple[RequestState, int]], first_rows: list[int], order: list[int]
) -> tuple[list[int], list[LogitsPlan]]:
    """Which batch rows need logits, and each request's plan, in the caller's order
    (`seqs[b]` is request `order[b]`)."""
    logits_rows: list[int] = []
    plans: list[LogitsPlan | None] = [None] * len(seqs)
    for batch_index, (state, n) in enumerate(seqs):
        first_row = first_rows[batch_index]
        completes = state.num_computed + n == len(state.token_ids)
        plan = LogitsPlan(sample_row=None, echo_first_row=len(logits_rows), num_echo_scored=0)
        if state.num_proposed:
            # The last known token's row, then one row per proposed token: all are sampled.
            plan.sample_row = len(logits_rows)
            plan.num_proposed_rows = state.num_proposed
            logits_rows.extend(range(first_row, first_row + n))
        elif state.sampling.echo:
            # Row p predicts token p + 1: every chunk row scores a prompt token, except the
            # last one when it predicts the first generated token instead.
            plan.num_echo_scored = n - 1 if completes else n
            logits_rows.extend(range(first_row, first_row + n))
            if completes:
                plan.sample_row = len(logits_rows) - 1
        elif completes:
            plan.sample_row = len(logits_rows)
            logits_rows.append(first_row + n - 1)
        plans[order[batch_index]] = plan
    return logits_rows, plans  # type: ignore[return-value]  # every slot was filled above
