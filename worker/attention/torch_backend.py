"""The plain-torch reference backend: runs anywhere torch does and is the oracle in tests.

Decodes attend in one batched SDPA call over their context blocks, gathered into a reused
buffer and padded to the longest decode context; each prefill chunk after a cached prefix
gathers its blocks and makes one SDPA call (a chunk that is its whole context attends to its
own projections). Simple and exact, and it pays for the gather and the padding: the CPU and
GPU backends read the blocks where they lie.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from worker.attention.metadata import AttentionMetadata


@dataclass(slots=True)
class PrefillChunk:
    """One sequence computing several tokens at once: rows [query_start, +num_query_tokens)."""

    query_start: int
    num_query_tokens: int
    num_context_tokens: int  # keys the last query sees: tokens cached before + this chunk
    # Blocks holding the whole context, or None when the chunk is the whole context (its keys
    # are then read straight from this step's projections, no gather).
    block_ids: torch.Tensor | None  # [ceil(num_context_tokens / block_size)] int64
    # True where a query may attend; None means plain causal (chunk == context).
    mask: torch.Tensor | None  # [num_query_tokens, num_context_tokens] bool


class GatherBuffers:
    """Reusable destinations for K/V blocks gathered by block table.

    On CPU a fresh multi-megabyte tensor per gather costs page faults on every layer of every
    step (several times the copy itself); reusing one buffer, grown on demand, avoids that.
    Each layer's gather is consumed before the next layer's overwrites it.
    """

    def __init__(self) -> None:
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None

    def take(self, cache: torch.Tensor, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Two [num_blocks, *cache.shape[1:]] buffers shaped like blocks of `cache`."""
        k = self._k
        if k is None or k.shape[1:] != cache.shape[1:] or k.dtype != cache.dtype:
            k = self._k = cache.new_empty((0, *cache.shape[1:]))
            self._v = cache.new_empty((0, *cache.shape[1:]))
        assert self._v is not None
        if k.shape[0] < num_blocks:
            size = max(num_blocks, 2 * k.shape[0])
            self._k = k.new_empty((size, *k.shape[1:]))
            self._v = k.new_empty((size, *k.shape[1:]))
        return self._k[:num_blocks], self._v[:num_blocks]


@dataclass(slots=True)
class TorchAttentionExtra:
    """What the reference derives from the shared metadata once per step."""

    decode_block_tables: torch.Tensor  # [num_decodes, max_decode_blocks] int64, padded with 0
    decode_mask: torch.Tensor  # [num_decodes, 1, 1, max_decode_blocks * block_size] bool
    prefills: list[PrefillChunk]


class TorchAttentionBackend:
    name = "torch"

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.gather_buffers = GatherBuffers()

    @staticmethod
    def kv_cache_shapes(
        num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int
    ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        shape = (num_blocks, block_size, n_kv_heads, head_dim)
        return shape, shape

    def prepare(self, meta: AttentionMetadata) -> None:
        bs = self.block_size
        d = meta.num_decodes
        device = meta.block_tables.device
        seq_lens = meta.seq_lens_host
        starts = meta.query_start_loc_host
        decode_blocks = -(-max(seq_lens[:d], default=0) // bs)
        decode_keys = torch.arange(decode_blocks * bs, device=device)
        decode_mask = decode_keys < meta.seq_lens[:d, None]  # [D, keys]
        block_tables = meta.block_tables.long()
        prefills = []
        for s in range(d, meta.num_seqs):
            num_query = starts[s + 1] - starts[s]
            num_blocks = -(-seq_lens[s] // bs)
            prefills.append(
                _prefill_chunk(starts[s], num_query, seq_lens[s], block_tables[s, :num_blocks])
            )
        meta.extra = TorchAttentionExtra(
            decode_block_tables=block_tables[:d, :decode_blocks].contiguous(),
            # [D, keys] -> [D, 1, 1, keys]: broadcast over KV heads and the query heads they serve
            decode_mask=decode_mask.view(d, 1, 1, decode_blocks * bs),
            prefills=prefills,
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
    ) -> torch.Tensor:
        return torch_paged_attention(q, k, v, k_cache, v_cache, meta, self.gather_buffers)


def _prefill_chunk(
    first_row: int, num_query: int, num_context: int, block_ids: torch.Tensor
) -> PrefillChunk:
    num_cached = num_context - num_query
    if num_cached == 0:  # the chunk is the whole context: plain causal over its own keys
        return PrefillChunk(first_row, num_query, num_context, block_ids=None, mask=None)
    device = block_ids.device
    # Query i sits at position num_cached + i and sees keys 0 ..= num_cached + i.
    query_positions = torch.arange(num_cached, num_context, device=device)
    mask = torch.arange(num_context, device=device)[None, :] <= query_positions[:, None]
    return PrefillChunk(first_row, num_query, num_context, block_ids=block_ids, mask=mask)


def torch_paged_attention(
    q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    v: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
    meta: AttentionMetadata,
    buffers: GatherBuffers,
) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
    extra: TorchAttentionExtra = meta.extra
    num_tokens, n_heads, head_dim = q.shape
    _, block_size, n_kv_heads, _ = k_cache.shape
    group = n_heads // n_kv_heads

    # [num_blocks, block_size, n_kv_heads, head_dim] -> [num_slots, n_kv_heads, head_dim]
    k_cache.view(-1, n_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, n_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)

    num_decodes = meta.num_decodes
    if num_decodes:
        block_table = extra.decode_block_tables
        context_len = block_table.shape[1] * block_size
        # The query heads sharing a KV head act as that head's query rows, so K/V are not
        # repeated per query head: q [D, n_kv_heads, group, head_dim] vs K [D, n_kv_heads, L, d].
        query = q[:num_decodes].view(num_decodes, n_kv_heads, group, head_dim)
        keys, values = _gather(k_cache, v_cache, block_table.flatten(), buffers)
        # [D * blocks, block_size, kv, d] -> [D, L, kv, d]
        keys = keys.view(num_decodes, context_len, n_kv_heads, head_dim)
        values = values.view(num_decodes, context_len, n_kv_heads, head_dim)
        attended = F.scaled_dot_product_attention(
            query, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=extra.decode_mask
        )  # [D, n_kv_heads, group, head_dim]
        out[:num_decodes] = attended.view(num_decodes, n_heads, head_dim)

    for chunk in extra.prefills:
        start, num_query = chunk.query_start, chunk.num_query_tokens
        rows = slice(start, start + num_query)
        if chunk.block_ids is None:
            keys, values = k[rows], v[rows]  # [num_query, n_kv_heads, head_dim]
        else:
            num_context = chunk.num_context_tokens
            keys, values = _gather(k_cache, v_cache, chunk.block_ids, buffers)
            # [blocks, block_size, kv, d] -> [blocks * block_size, kv, d] -> [num_context, kv, d]
            keys = keys.flatten(0, 1)[:num_context]
            values = values.flatten(0, 1)[:num_context]
        attended = F.scaled_dot_product_attention(
            _group_queries(q[rows], n_kv_heads),
            _expand_kv(keys, group),
            _expand_kv(values, group),
            attn_mask=chunk.mask,
            is_causal=chunk.mask is None,
        )  # [n_kv_heads, group, num_query, head_dim]
        # [kv, group, num_query, d] -> [num_query, kv, group, d] -> [num_query, n_heads, d]
        out[rows] = attended.permute(2, 0, 1, 3).reshape(num_query, n_heads, head_dim)

    # [num_tokens, n_heads, head_dim] -> [num_tokens, n_heads * head_dim]
    return out.view(num_tokens, n_heads * head_dim)


def _gather(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_ids: torch.Tensor,  # [num_blocks]
    buffers: GatherBuffers,
) -> tuple[torch.Tensor, torch.Tensor]:  # each [num_blocks, block_size, kv, d]
    # index_select copies whole blocks (contiguous runs): several times faster on CPU than
    # advanced indexing.
    k_out, v_out = buffers.take(k_cache, block_ids.shape[0])
    torch.index_select(k_cache, 0, block_ids, out=k_out)
    torch.index_select(v_cache, 0, block_ids, out=v_out)
    return k_out, v_out


def _group_queries(q: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
    num_query, n_heads, head_dim = q.shape
    # [num_query, n_heads, d] -> [num_query, kv, group, d] -> [kv, group, num_query, d]
    return q.view(num_query, n_kv_heads, n_heads // n_kv_heads, head_dim).permute(1, 2, 0, 3)


def _expand_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    num_context, n_kv_heads, head_dim = x.shape
    # [num_context, kv, d] -> [kv, 1, num_context, d] -> [kv, group, num_context, d], a view
    # with stride 0 over the group: grouped-query attention without copying K/V per head.
    return x.permute(1, 0, 2).unsqueeze(1).expand(n_kv_heads, group, num_context, head_dim)
