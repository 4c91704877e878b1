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
from worker.packed_modules import install_packed
from worker.packed_weights import PackedTensor, concat_packed
from worker.weight_layout import store_input_major, wants_input_major

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
    """Meta's RMSNorm. With `kernels` (float32 on CPU) it runs as one fused C++ pass, and
    `add` folds the residual add into it; so it does with `fused_ops` (Triton, on CUDA)."""

    fused_ops: Any = None  # worker/fused_ops.py's FusedOps, set by install_fused_ops

    def __init__(self, dim: int, eps: float, kernels: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.kernels = kernels
        self.weight = _weight(dim)

    def _fused(self, x: torch.Tensor) -> bool:
        return self.kernels and x.dtype == torch.float32 and x.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_ops is not None:
            return self.fused_ops.rms_norm(x, self.weight, self.eps)
        if self._fused(x):
            return torch.ops.loom.rms_norm(x, self.weight, self.eps)
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Normalise in float32 as Meta does, round to x's dtype, then scale.
        normed = F.rms_norm(x.float(), self.weight.shape, None, self.eps)
        return normed.type_as(x) * self.weight

    def add(self, x: torch.Tensor, delta: torch.Tensor | None) -> torch.Tensor:
        """x += delta (the residual stream, in place), then the norm of x."""
        if delta is None:
            return self(x)
        if self.fused_ops is not None:
            return self.fused_ops.add_rms_norm(x, delta, self.weight, self.eps)
        if self._fused(x):
            return torch.ops.loom.add_rms_norm(x, delta, self.weight, self.eps)
        x += delta
        return self(x)


def rope_table(head_dim: int, max_len: int, theta: float) -> torch.Tensor:
    """cos + i sin of position * frequency: [max_len, head_dim // 2] complex64."""
    # Computed in float64, then rounded once, so long positions keep their accuracy.
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Meta's interleaved RoPE: dims (2i, 2i+1) are one complex number rotated by angle i.

    x: [num_tokens, heads, head_dim], rows may be strided; freqs: [num_tokens, 1, head_dim // 2]
    complex64. Returns a new contiguous tensor of x's dtype.
    """
    num_tokens, heads, head_dim = x.shape
    xf = x if x.dtype == torch.float32 else x.float()
    # [T, heads, head_dim] -> [T, heads, head_dim / 2] complex
    pairs = torch.view_as_complex(xf.unflatten(-1, (head_dim // 2, 2)))
    # [T, heads, head_dim / 2] complex -> [T, heads, head_dim]
    return torch.view_as_real(pairs * freqs).flatten(2).type_as(x)


class Attention(nn.Module):
    """Q, K and V come from one fused projection `wqkv` (the rows of Meta's wq, wk, wv one
    after the other) unless `fused` is False, which keeps the three. With `fused_ops` (Triton,
    on CUDA) RoPE and the K/V cache write are one pass over the fused projection."""

    fused_ops: Any = None  # worker/fused_ops.py's FusedOps, set by install_fused_ops

    def __init__(self, args: ModelArgs, fused: bool = True, kernels: bool = False) -> None:
        super().__init__()
        self.kernels = kernels
        self.n_heads = args.n_heads
        self.n_kv_heads = args.n_kv_heads
        self.head_dim = args.head_dim
        q_dim, kv_dim = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
        self.fused = fused
        if fused:
            self.wqkv = Linear(args.dim, q_dim + 2 * kv_dim)
        else:
            self.wq = Linear(args.dim, q_dim)
            self.wk = Linear(args.dim, kv_dim)
            self.wv = Linear(args.dim, kv_dim)
        self.wo = Linear(q_dim, args.dim)

    def forward(
        self,
        x: torch.Tensor,  # [num_tokens, dim]
        freqs: torch.Tensor,  # [num_tokens, 1, head_dim // 2] complex64
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: Any,
        attention_fn: AttentionFn,
    ) -> torch.Tensor:
        num_tokens = x.shape[0]
        h, kvh = self.n_heads, self.n_kv_heads
        if self.fused:
            # [T, (h + 2 kvh) * head_dim] -> [T, h + 2 kvh, head_dim]
            qkv = self.wqkv(x).view(num_tokens, h + 2 * kvh, self.head_dim)
            if self.fused_ops is not None:  # K and V reach the cache here, not in attention
                q = self.fused_ops.rope_and_store(qkv, freqs, h, k_cache, v_cache,
                                                  meta.slot_mapping)  # fmt: skip
                return self.wo(attention_fn(q, None, None, k_cache, v_cache, meta))
            if self.kernels and qkv.dtype == torch.float32 and qkv.device.type == "cpu":
                # Q and K rotate in place, one C++ pass; all three stay views of qkv.
                cos_sin = torch.view_as_real(freqs).view(num_tokens, -1, 2)
                torch.ops.loom.rope_(qkv[:, : h + kvh], cos_sin)
                q, k, v = qkv[:, :h], qkv[:, h : h + kvh], qkv[:, h + kvh :]
            else:
                # Q and K rotate in one pass; V stays a view into the projection.
                qk = apply_rope(qkv[:, : h + kvh], freqs)
                q, k, v = qk[:, :h], qk[:, h:], qkv[:, h + kvh :]
        else:
            # [T, heads * head_dim] -> [T, heads, head_dim]
            q = apply_rope(self.wq(x).view(num_tokens, h, self.head_dim), freqs)
            k = apply_rope(self.wk(x).view(num_tokens, kvh, self.head_dim), freqs)
            v = self.wv(x).view(num_tokens, kvh, self.head_dim)
        return self.wo(attention_fn(q, k, v, k_cache, v_cache, meta))


class FeedForward(nn.Module):
    """SwiGLU; the gate and up projections are one fused `w13` (w1's rows, then w3's) unless
    `fused` is False; with `kernels` SiLU(gate) * up is one C++ pass (with `fused_ops`, one
    Triton pass)."""

    fused_ops: Any = None  # worker/fused_ops.py's FusedOps, set by install_fused_ops

    def __init__(self, dim: int, hidden_dim: int, fused: bool = True, kernels: bool = False):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.fused = fused
        self.kernels = kernels
        if fused:
            self.w13 = Linear(dim, 2 * hidden_dim)
        else:
            self.w1 = Linear(dim, hidden_dim)
            self.w3 = Linear(dim, hidden_dim)
        self.w2 = Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fused:
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        gate_up = self.w13(x)  # [T, 2 * hidden]: gate, then up
        if self.fused_ops is not None:
            return self.w2(self.fused_ops.silu_and_mul(gate_up))
        if self.kernels and gate_up.dtype == torch.float32 and gate_up.device.type == "cpu":
            return self.w2(torch.ops.loom.silu_and_mul(gate_up))
        # [T, 2 * hidden] -> gate [T, hidden], up [T, hidden]; silu and the product in place
        gate, up = gate_up.split(self.hidden_dim, dim=-1)
        return self.w2(F.silu(gate, inplace=True).mul_(up))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, fused: bool = True, kernels: bool = False) -> None:
        super().__init__()
        self.attention = Attention(args, fused, kernels)
        self.feed_forward = FeedForward(args.dim, args.hidden_dim, fused, kernels)
        self.attention_norm = RMSNorm(args.dim, args.norm_eps, kernels)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps, kernels)

    def forward(
        self,
        x: torch.Tensor,  # [num_tokens, dim]: the residual stream, updated in place
        delta: torch.Tensor | None,  # the previous block's output, not yet added to x
        freqs: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: Any,
        attention_fn: AttentionFn,
    ) -> torch.Tensor:  # this block's feed-forward output, for the next block to add
        # Each residual add happens inside the norm that follows it.
        normed = self.attention_norm.add(x, delta)
        h = self.attention(normed, freqs, k_cache, v_cache, meta, attention_fn)
        return self.feed_forward(self.ffn_norm.add(x, h))


class Transformer(nn.Module):
    def __init__(
        self,
        args: ModelArgs,
        attention_fn: AttentionFn = paged_attention,
        fused: bool = True,
        kernels: bool = False,
    ) -> None:
        super().__init__()
        self.args = args
        self.attention_fn = attention_fn
        self.fused = fused
        self.tok_embeddings = Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(args, fused, kernels) for _ in range(args.n_layers)
        )
        self.norm = RMSNorm(args.dim, args.norm_eps, kernels)
        self.output = Linear(args.dim, args.vocab_size)
        freqs = rope_table(args.head_dim, args.max_seq_len, args.rope_theta)
        self.register_buffer("rope_freqs", freqs, persistent=False)

    @classmethod
    def from_weights(
        cls,
        args: ModelArgs,
        weights: dict[str, torch.Tensor],
        device: torch.device,
        attention_fn: AttentionFn = paged_attention,
        fused: bool = True,
        kernels: bool = False,
        **options: Any,
    ) -> Transformer:
        """Build straight from loaded tensors with Meta's names (the constructor allocates
        no weights). With `fused`, each layer's wq/wk/wv and w1/w3 are concatenated into
        wqkv and w13 here, in memory only; `weights` is consumed. `kernels`: run the norms
        and SiLU through Loom's C++ CPU kernels (worker/cpu_kernels.py), which must load.
        `options` go to a subclass's constructor (worker/tp_model.py's group). Weights that
        are PackedTensors (quantized blocks, worker/packed_weights.py) get the packed modules
        of worker/packed_modules.py in place of the float ones."""
        model = cls(args, attention_fn, fused, kernels, **options)
        if fused:
            weights = fuse_projections(weights, args.n_layers)
        install_packed(model, weights, Embedding)
        model.load_state_dict(weights, strict=True, assign=True)
        model = model.to(device).eval().requires_grad_(False)
        if wants_input_major(device, model.norm.weight.dtype):
            store_input_major(model, Linear)
        return model

    def forward(
        self,
        input_ids: torch.Tensor,  # [num_tokens]
        positions: torch.Tensor,  # [num_tokens]
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],  # per layer (K, V)
        meta: Any,  # what the attention function needs, e.g. AttentionMetadata
    ) -> torch.Tensor:  # [num_tokens, dim], before the final norm
        h = self.tok_embeddings(input_ids)
        # [T, head_dim / 2] -> [T, 1, head_dim / 2], shared by all heads
        freqs = self.rope_freqs.index_select(0, positions).unsqueeze(1)
        delta = None
        for layer, (k_cache, v_cache) in zip(self.layers, kv_caches, strict=True):
            delta = layer(h, delta, freqs, k_cache, v_cache, meta, self.attention_fn)
        if delta is not None:
            h += delta
        return h

    def compute_logits(
        self,
        hidden: torch.Tensor,  # [num_tokens, dim]
        rows: torch.Tensor | None,  # [num_rows] which tokens need logits; None: every one
    ) -> torch.Tensor:  # [num_rows, vocab_size] float32
        if rows is not None:
            hidden = hidden.index_select(0, rows)
        return self.output(self.norm(hidden)).float()


def fuse_projections(weights: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """Meta's per-projection weights -> the fused ones the model runs (`weights` is emptied
    of the parts as it goes, so the unfused copies can be freed layer by layer). Packed
    parts of one type fuse into one PackedTensor; parts of several types stay a list."""
    fused = dict(weights)
    weights.clear()
    for i in range(n_layers):
        attn, ffn = f"layers.{i}.attention.", f"layers.{i}.feed_forward."
        parts = [fused.pop(f"{attn}{name}.weight") for name in ("wq", "wk", "wv")]
        fused[f"{attn}wqkv.weight"] = _fuse(parts)
        parts = [fused.pop(f"{ffn}{name}.weight") for name in ("w1", "w3")]
        fused[f"{ffn}w13.weight"] = _fuse(parts)
    return fused


def _fuse(parts: list[Any]) -> Any:
    if not any(isinstance(p, PackedTensor) for p in parts):
        return torch.cat(parts)
    if all(isinstance(p, PackedTensor) for p in parts):
        return concat_packed(parts) or parts
    return parts
