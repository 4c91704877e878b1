"""Turn the scheduled requests of one step into the flat batch the model runs.

Only per-sequence work happens in Python. When every sequence computes one token (a decode
step) that is all there is: the indices go to the device in two copies. When prompt chunks
are in the step, the per-token indices (positions, cache slots) are built with tensor ops on
the device.
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

    tables = [
        st.block_ids[:nb] + [0] * (max_blocks - nb)
        for (st, _), nb in zip(seqs, blocks_needed, strict=True)
    ]  # [num_seqs, max_blocks], padded with block 0 (never read)
    logits_rows, plans = _logits_plans(seqs, first_rows, order)
    host = _HostIndices(starts, lens, query_start_loc, contexts, tables, logits_rows)
    if num_tokens == num_seqs:
        found = _decode_indices(seqs, host, block_size, device)
    else:
        found = _chunk_indices(seqs, host, block_size, device)
    attn = AttentionMetadata(
        slot_mapping=found.slot_mapping,
        num_decodes=sum(1 for n in lens if n == 1),
        query_start_loc=found.query_start_loc,
        seq_lens=found.seq_lens,
        block_tables=found.block_tables,
        max_query_len=max(lens),
        max_seq_len=max(contexts),
        query_start_loc_host=query_start_loc,
        seq_lens_host=contexts,
        backend=backend,
    )
    backend.prepare(attn)
    return StepBatch(
        input_ids=found.input_ids,
        positions=found.positions,
        attn=attn,
        logits_rows=found.logits_rows,
        plans=plans,
        lora_runs=_lora_runs(seqs, query_start_loc),
    )


@dataclass(slots=True)
class _HostIndices:
    """The per-sequence numbers of a step, in batch order."""

    starts: list[int]  # tokens cached before this step
    lens: list[int]  # tokens computed this step
    query_start_loc: list[int]  # [num_seqs + 1] first batch row of each sequence
    contexts: list[int]  # tokens cached once this step's are in
    tables: list[list[int]]  # [num_seqs, max_blocks] block ids, padded with block 0
    logits_rows: list[int]  # the batch rows that need logits


@dataclass(slots=True)
class _DeviceIndices:
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    slot_mapping: torch.Tensor  # [num_tokens] int64
    logits_rows: torch.Tensor  # [num_logits] int64
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32
    seq_lens: torch.Tensor  # [num_seqs] int32
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32


def _decode_indices(
    seqs: list[tuple[RequestState, int]], host: _HostIndices, block_size: int, device: torch.device
) -> _DeviceIndices:
    """Every sequence computes one token: a few numbers each, worked out on the host and copied
    in two tensors. Right after a step has streamed the weights through the caches each torch
    op costs tens of microseconds, and a small model's decode step takes a few milliseconds."""
    n = len(seqs)
    positions = host.starts
    input_ids = [st.token_ids[p] for (st, _), p in zip(seqs, positions, strict=True)]
    # block table [7, 2], block size 16, position 20 -> slot 2 * 16 + 4 = 36
    slots = [
        table[p // block_size] * block_size + p % block_size
        for table, p in zip(host.tables, positions, strict=True)
    ]
    longs = to_device([*input_ids, *positions, *slots, *host.logits_rows], torch.long, device)
    ints = to_device(
        [*host.query_start_loc, *host.contexts, *chain.from_iterable(host.tables)],
        torch.int32,
        device,
    )
    return _DeviceIndices(
        input_ids=longs[:n],
        positions=longs[n : 2 * n],
        slot_mapping=longs[2 * n : 3 * n],
        logits_rows=longs[3 * n :],
        query_start_loc=ints[: n + 1],
        seq_lens=ints[n + 1 : 2 * n + 1],
        block_tables=ints[2 * n + 1 :].view(n, -1),
    )


def _chunk_indices(
    seqs: list[tuple[RequestState, int]], host: _HostIndices, block_size: int, device: torch.device
) -> _DeviceIndices:
    """Prompt chunks among the sequences: per-token indices are built with tensor ops on the
    device, from per-sequence numbers only."""
    lens = host.lens
    num_tokens = host.query_start_loc[-1]
    chunks = (st.token_ids[s : s + n] for (st, n), s in zip(seqs, host.starts, strict=True))
    input_ids = to_device(list(chain.from_iterable(chunks)), torch.long, device)
    block_tables = to_device(host.tables, torch.int32, device)
    seq_of_token = torch.repeat_interleave(
        torch.arange(len(seqs), device=device),
        to_device(lens, torch.long, device),
        output_size=num_tokens,
    )  # [num_tokens]
    # position = row in the batch - first row of its sequence + tokens cached before
    first_rows = host.query_start_loc[:-1]
    row_to_position = to_device(
        [s - r for s, r in zip(host.starts, first_rows, strict=True)], torch.long, device
    )
    positions = torch.arange(num_tokens, device=device) + row_to_position[seq_of_token]
    # block table [7, 2], block size 16, position 20 -> slot 2 * 16 + 4 = 36
    slot_mapping = (
        block_tables[seq_of_token, positions // block_size].long() * block_size
        + positions % block_size
    )
    return _DeviceIndices(
        input_ids=input_ids,
        positions=positions,
        slot_mapping=slot_mapping,
        logits_rows=to_device(host.logits_rows, torch.long, device),
        query_start_loc=to_device(host.query_start_loc, torch.int32, device),
        seq_lens=to_device(host.contexts, torch.int32, device),
        block_tables=block_tables,
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
