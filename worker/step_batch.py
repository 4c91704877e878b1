"""Turn the scheduled requests of one step into the flat batch the model runs.

Only per-sequence work happens in Python; per-token indices (positions, cache slots) are
built with tensor ops on the target device.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate, chain

import torch

from worker.attention import AttentionMetadata, GatherBuffers, PrefillChunk
from worker.step import NewRequest, SamplingOptions


@dataclass(slots=True)
class RequestState:
    """What the worker keeps about a request between steps."""

    req_id: str
    token_ids: list[int]  # every token known: prompt, then fed-back outputs
    block_ids: list[int]  # logical block i -> physical block id
    sampling: SamplingOptions
    num_computed: int  # tokens whose K/V are in the cache
    num_prompt_tokens: int  # token_ids[:num_prompt_tokens] is the prompt; the rest is output

    @classmethod
    def from_new(cls, new: NewRequest) -> RequestState:
        return cls(
            req_id=new.req_id,
            token_ids=list(new.prompt_token_ids),
            block_ids=list(new.block_ids),
            sampling=new.sampling,
            num_computed=new.num_computed_tokens,
            num_prompt_tokens=len(new.prompt_token_ids) - new.num_output_tokens,
        )


@dataclass(slots=True)
class LogitsPlan:
    """Which rows of the logits matrix belong to one scheduled request."""

    sample_row: int | None  # row whose logits give the next token; None mid-prefill
    echo_first_row: int  # echo only: row predicting prompt token num_computed + 1
    num_echo_scored: int  # prompt tokens scored this step (0 unless echo)


@dataclass(slots=True)
class StepBatch:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    attn: AttentionMetadata
    logits_rows: torch.Tensor  # [num_logits] rows of the flat batch that need logits
    plans: list[LogitsPlan]  # one per scheduled request, in the order given


def build_step_batch(
    scheduled: list[tuple[RequestState, int]],
    block_size: int,
    device: torch.device,
    gather_buffers: GatherBuffers,
) -> StepBatch:
    """`scheduled` pairs each request with the number of tokens it computes this step;
    `gather_buffers` are the KV cache's, where attention gathers context blocks."""
    # One-token sequences first, so attention can run them as one batched call.
    order = sorted(range(len(scheduled)), key=lambda i: scheduled[i][1] != 1)
    seqs = [scheduled[i] for i in order]
    num_seqs = len(seqs)
    num_decodes = sum(1 for _, n in seqs if n == 1)
    starts = [state.num_computed for state, _ in seqs]
    lens = [n for _, n in seqs]
    contexts = [s + n for s, n in zip(starts, lens, strict=True)]
    first_rows = [0, *accumulate(lens)][:-1]
    num_tokens = sum(lens)
    blocks_needed = [-(-c // block_size) for c in contexts]
    max_blocks = max(blocks_needed)

    def tensor(values: list) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    chunks = (st.token_ids[s : s + n] for (st, n), s in zip(seqs, starts, strict=True))
    input_ids = tensor(list(chain.from_iterable(chunks)))
    block_table = tensor(
        [
            st.block_ids[:nb] + [0] * (max_blocks - nb)
            for (st, _), nb in zip(seqs, blocks_needed, strict=True)
        ]
    )  # [num_seqs, max_blocks]
    seq_of_token = torch.repeat_interleave(
        torch.arange(num_seqs, device=device), tensor(lens), output_size=num_tokens
    )  # [num_tokens]
    # position = row in the batch - first row of its sequence + tokens cached before
    row_to_position = tensor([s - r for s, r in zip(starts, first_rows, strict=True)])
    positions = torch.arange(num_tokens, device=device) + row_to_position[seq_of_token]
    # block_table [7, 2], block_size 16, position 20 -> slot 2 * 16 + 4 = 36
    slot_mapping = (
        block_table[seq_of_token, positions // block_size] * block_size + positions % block_size
    )

    decode_blocks = max(blocks_needed[:num_decodes], default=0)
    decode_keys = torch.arange(decode_blocks * block_size, device=device)
    decode_mask = decode_keys < tensor(contexts[:num_decodes])[:, None]  # [D, keys]
    prefills = [
        _prefill_chunk(first_rows[i], lens[i], starts[i], block_table[i, : blocks_needed[i]])
        for i in range(num_decodes, num_seqs)
    ]
    attn = AttentionMetadata(
        slot_mapping=slot_mapping,
        num_decodes=num_decodes,
        decode_block_tables=block_table[:num_decodes, :decode_blocks].contiguous(),
        # [D, keys] -> [D, 1, 1, keys]: broadcast over KV heads and the query heads they serve
        decode_mask=decode_mask.view(num_decodes, 1, 1, decode_blocks * block_size),
        prefills=prefills,
        gather_buffers=gather_buffers,
    )

    logits_rows, plans = _logits_plans(seqs, first_rows, order)
    return StepBatch(
        input_ids=input_ids,
        positions=positions,
        attn=attn,
        logits_rows=tensor(logits_rows),
        plans=plans,
    )


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
        if state.sampling.echo:
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


def _prefill_chunk(
    first_row: int, num_query: int, num_cached: int, block_ids: torch.Tensor
) -> PrefillChunk:
    num_context = num_cached + num_query
    if num_cached == 0:  # the chunk is the whole context: plain causal over its own keys
        return PrefillChunk(first_row, num_query, num_context, block_ids=None, mask=None)
    device = block_ids.device
    # Query i sits at position num_cached + i and sees keys 0 ..= num_cached + i.
    query_positions = torch.arange(num_cached, num_context, device=device)
    mask = torch.arange(num_context, device=device)[None, :] <= query_positions[:, None]
    return PrefillChunk(first_row, num_query, num_context, block_ids=block_ids, mask=mask)
