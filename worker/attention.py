"""Paged attention over a block KV cache: the one seam behind which a fast kernel can sit.

The model calls `paged_attention` once per layer with the step's `AttentionMetadata`. This is
the plain-torch reference: it runs anywhere torch does and is what the tests check.

Cache layout per layer, for K and for V: [num_blocks, block_size, n_kv_heads, head_dim].
A token at position p of a sequence with block table [7, 2] and block size 16 lives in
slot block_table[p // 16] * 16 + p % 16: position 20 -> slot 2 * 16 + 4 = 36.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class PrefillChunk:
    """One sequence computing several tokens at once: rows [query_start, +num_query_tokens)."""

    query_start: int
    num_query_tokens: int
    num_context_tokens: int  # keys the last query sees: tokens cached before + this chunk
    # Blocks holding the whole context, or None when the chunk is the whole context (its keys
    # are then read straight from this step's projections, no gather).
    block_ids: torch.Tensor | None  # [ceil(num_context_tokens / block_size)]
    # True where a query may attend; None means plain causal (chunk == context).
    mask: torch.Tensor | None  # [num_query_tokens, num_context_tokens] bool


class GatherBuffers:
    """Reusable destinations for K/V blocks gathered by block table, one pair per cache.

    On CPU a fresh multi-megabyte tensor per gather costs page faults on every layer of every
    step (several times the copy itself); reusing one buffer, grown on demand, avoids that.
    Each layer's gather is consumed before the next layer's overwrites it.
    """

    def __init__(self, cache: torch.Tensor) -> None:  # cache: one layer's K (or V)
        self._k = cache.new_empty((0, *cache.shape[1:]))
        self._v = cache.new_empty((0, *cache.shape[1:]))

    def take(self, num_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._k.shape[0] < num_blocks:
            size = max(num_blocks, 2 * self._k.shape[0])
            self._k = self._k.new_empty((size, *self._k.shape[1:]))
            self._v = self._v.new_empty((size, *self._v.shape[1:]))
        return self._k[:num_blocks], self._v[:num_blocks]


@dataclass(slots=True)
class AttentionMetadata:
    """Where this step's tokens go in the cache and what each one attends to.

    Single-token sequences (decodes) come first in the flat batch and run as one batched call;
    longer chunks follow, one call each.
    """

    slot_mapping: torch.Tensor  # [num_tokens] cache slot of each new token's K/V
    num_decodes: int  # rows [0, num_decodes) are one-token sequences
    decode_block_tables: torch.Tensor  # [num_decodes, max_decode_blocks], padded with block 0
    decode_mask: torch.Tensor  # [num_decodes, 1, 1, max_decode_blocks * block_size] bool
    prefills: list[PrefillChunk]
    gather_buffers: GatherBuffers  # where the gathered K/V blocks go


def paged_attention(
    q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    v: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    k_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
    v_cache: torch.Tensor,  # [num_blocks, block_size, n_kv_heads, head_dim]
    meta: AttentionMetadata,
) -> torch.Tensor:  # [num_tokens, n_heads * head_dim]
    num_tokens, n_heads, head_dim = q.shape
    _, block_size, n_kv_heads, _ = k_cache.shape
    group = n_heads // n_kv_heads

    # [num_blocks, block_size, n_kv_heads, head_dim] -> [num_slots, n_kv_heads, head_dim]
    k_cache.view(-1, n_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, k)
    v_cache.view(-1, n_kv_heads, head_dim).index_copy_(0, meta.slot_mapping, v)
    out = torch.empty_like(q)

    num_decodes = meta.num_decodes
    if num_decodes:
        block_table = meta.decode_block_tables
        context_len = block_table.shape[1] * block_size
        # The query heads sharing a KV head act as that head's query rows, so K/V are not
        # repeated per query head: q [D, n_kv_heads, group, head_dim] vs K [D, n_kv_heads, L, d].
        query = q[:num_decodes].view(num_decodes, n_kv_heads, group, head_dim)
        keys, values = _gather(k_cache, v_cache, block_table.flatten(), meta.gather_buffers)
        # [D * blocks, block_size, kv, d] -> [D, L, kv, d]
        keys = keys.view(num_decodes, context_len, n_kv_heads, head_dim)
        values = values.view(num_decodes, context_len, n_kv_heads, head_dim)
        attended = F.scaled_dot_product_attention(
            query, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=meta.decode_mask
        )  # [D, n_kv_heads, group, head_dim]
        out[:num_decodes] = attended.view(num_decodes, n_heads, head_dim)

    for chunk in meta.prefills:
        start, num_query = chunk.query_start, chunk.num_query_tokens
        rows = slice(start, start + num_query)
        if chunk.block_ids is None:
            keys, values = k[rows], v[rows]  # [num_query, n_kv_heads, head_dim]
        else:
            num_context = chunk.num_context_tokens
            keys, values = _gather(k_cache, v_cache, chunk.block_ids, meta.gather_buffers)
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
    k_out, v_out = buffers.take(block_ids.shape[0])
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
