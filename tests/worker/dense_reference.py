"""The test oracle: Meta's Llama forward written out densely in float64, with no KV cache,
no batching and no code shared with worker/model.py."""

from __future__ import annotations

import math

import torch


def dense_logits(
    weights: dict[str, torch.Tensor], params: dict, token_ids: list[int]
) -> torch.Tensor:
    """Logits [len(token_ids), vocab] in float64 for every position of one sequence."""
    w = {name: tensor.double() for name, tensor in weights.items()}
    n_heads = params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = params["dim"] // n_heads
    eps = params.get("norm_eps", 1e-5)
    theta = params.get("rope_theta", 10000.0)
    n = len(token_ids)

    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(n, dtype=torch.float64), freqs)
    rotation = torch.polar(torch.ones_like(angles), angles)  # [n, head_dim / 2] complex

    def rms_norm(x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * gain

    def rotate(x: torch.Tensor) -> torch.Tensor:  # [n, heads, head_dim], pairs as complex
        pairs = torch.view_as_complex(x.reshape(n, x.shape[1], head_dim // 2, 2).contiguous())
        return torch.view_as_real(pairs * rotation[:, None, :]).reshape(x.shape)

    causal = torch.ones(n, n, dtype=torch.bool).tril()
    x = w["tok_embeddings.weight"][torch.tensor(token_ids)]
    layer = 0
    while f"layers.{layer}.attention.wq.weight" in w:
        p = f"layers.{layer}."
        h = rms_norm(x, w[p + "attention_norm.weight"])
        q = rotate((h @ w[p + "attention.wq.weight"].T).reshape(n, n_heads, head_dim))
        k = rotate((h @ w[p + "attention.wk.weight"].T).reshape(n, n_kv_heads, head_dim))
        v = (h @ w[p + "attention.wv.weight"].T).reshape(n, n_kv_heads, head_dim)
        k = k.repeat_interleave(n_heads // n_kv_heads, dim=1)
        v = v.repeat_interleave(n_heads // n_kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(head_dim)
        scores = scores.masked_fill(~causal, float("-inf"))
        attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, -1)
        x = x + attended @ w[p + "attention.wo.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"])
        gate = torch.nn.functional.silu(h @ w[p + "feed_forward.w1.weight"].T)
        x = x + (gate * (h @ w[p + "feed_forward.w3.weight"].T)) @ w[p + "feed_forward.w2.weight"].T
        layer += 1
    return rms_norm(x, w["norm.weight"]) @ w["output.weight"].T
