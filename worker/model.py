"""Llama over one flat batch of tokens from many sequences, with Meta's parameter names.

Projections and the MLP run on all tokens at once; attention goes through an attention
function (by default `paged_attention`) that reads and writes the block KV cache.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.attention import paged_attention
from worker.model_args import ModelArgs

# (q, k, v, k_cache, v_cache, metadata) -> [num_tokens, n_heads * head_dim]
AttentionFn = Callable[..., torch.Tensor]


def _weight(*shape: int) -> nn.Parameter:
    # Uninitialised on the meta device: the loader assigns every weight, and skipping the
    # random init of nn.Linear / nn.Embedding saves seconds per model.
    return nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)


class Linear(nn.Module):
    """nn.Linear without bias or init; `weight` is [out_features, in_features]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = _weight(out_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class Embedding(nn.Module):
    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.weight = _weight(vocab_size, dim)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _weight(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 as Meta does, whatever the weights' dtype.
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * frequency, [max_len, head_dim // 2] in float32."""
    # Computed in float64, then rounded once, so long positions keep their accuracy.
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Meta's interleaved RoPE: dims (2i, 2i+1) are one complex number rotated by angle i.

    x: [num_tokens, heads, head_dim]; cos, sin: [num_tokens, 1, head_dim // 2].
    """
    num_tokens, heads, head_dim = x.shape
    # [T, heads, head_dim] -> [T, heads, head_dim / 2, 2]
    pairs = x.float().view(num_tokens, heads, head_dim // 2, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    # [T, heads, head_dim / 2, 2] -> [T, heads, head_dim]
    return rotated.flatten(2).type_as(x)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        self.wq = Linear(args.dim, args.n_heads * args.head_dim)
        self.wk = Linear(args.dim, args.n_kv_heads * args.head_dim)
        self.wv = Linear(args.dim, args.n_kv_heads * args.head_dim)
        self.wo = Linear(args.n_heads * args.head_dim, args.dim)

    def forward(
        self,
        x: torch.Tensor,  # [num_tokens, dim]
        cos: torch.Tensor,  # [num_tokens, 1, head_dim // 2]
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: Any,
        attention_fn: AttentionFn,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        # [T, heads * head_dim] -> [T, heads, head_dim]
        q = self.wq(x).view(num_tokens, self.n_heads, self.head_dim)
        k = self.wk(x).view(num_tokens, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(num_tokens, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.wo(attention_fn(q, k, v, k_cache, v_cache, meta))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = Linear(dim, hidden_dim)
        self.w2 = Linear(hidden_dim, dim)
        self.w3 = Linear(dim, hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: Any,
        attention_fn: AttentionFn,
    ) -> torch.Tensor:
        h = x + self.attention(
            self.attention_norm(x), cos, sin, k_cache, v_cache, meta, attention_fn
        )
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs, attention_fn: AttentionFn = paged_attention) -> None:
        super().__init__()
        self.args = args
        self.attention_fn = attention_fn
        self.tok_embeddings = Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(TransformerBlock(args) for _ in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = Linear(args.dim, args.vocab_size)
        cos, sin = rope_tables(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @classmethod
    def from_weights(
        cls,
        args: ModelArgs,
        weights: dict[str, torch.Tensor],
        device: torch.device,
        attention_fn: AttentionFn = paged_attention,
    ) -> Transformer:
        """Build straight from loaded tensors (the constructor allocates no weights)."""
        model = cls(args, attention_fn)
        model.load_state_dict(weights, strict=True, assign=True)
        return model.to(device).eval().requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],  # per layer (K, V)
        meta: Any,  # what the attention function needs, e.g. AttentionMetadata
    ) -> torch.Tensor:  # [num_tokens, dim], before the final norm
        h = self.tok_embeddings(input_ids)
        # [T, head_dim / 2] -> [T, 1, head_dim / 2], shared by all heads
        cos = self.rope_cos.index_select(0, positions).unsqueeze(1)
        sin = self.rope_sin.index_select(0, positions).unsqueeze(1)
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            h = layer(h, cos, sin, k_cache, v_cache, meta, self.attention_fn)
        return h

    def compute_logits(
        self,
        hidden: torch.Tensor,  # [num_tokens, dim]
        rows: torch.Tensor,  # [num_rows] which tokens need logits
    ) -> torch.Tensor:  # [num_rows, vocab_size] float32
        return self.output(self.norm(hidden.index_select(0, rows))).float()
