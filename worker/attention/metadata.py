"""What every attention backend is told about a step: the one metadata object they share.

The flat batch holds the step's sequences one after another, one-token sequences (decodes)
first. Sequence s owns batch rows [query_start_loc[s], query_start_loc[s + 1]); after the step
its context holds seq_lens[s] tokens, the last of them the rows just computed, so query i of
s sits at position seq_lens[s] - num_queries + i and sees keys 0 ..= that position.

Cache layout per layer, for K and for V: [num_blocks, block_size, n_kv_heads, head_dim].
A token at position p of a sequence with block table [7, 2] and block size 16 lives in
slot block_table[p // 16] * 16 + p % 16: position 20 -> slot 2 * 16 + 4 = 36.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(slots=True)
class AttentionMetadata:
    slot_mapping: torch.Tensor  # [num_tokens] int64: cache slot of each new token's K/V
    num_decodes: int  # sequences [0, num_decodes) are one-token decodes, rows [0, num_decodes)
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: first batch row of each sequence
    seq_lens: torch.Tensor  # [num_seqs] int32: context length once this step's tokens are in
    # [num_seqs, max_blocks] int32: block ids of each context, padded with block 0 (never read)
    block_tables: torch.Tensor
    max_query_len: int
    max_seq_len: int
    # The same numbers on the host, for backends that plan work there.
    query_start_loc_host: list[int]
    seq_lens_host: list[int]
    backend: Any  # the AttentionBackend that runs this step (paged_attention dispatches to it)
    extra: Any = None  # what that backend's prepare() derived for it

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_host)
