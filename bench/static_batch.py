"""A Meta-style static batch loop: the baseline of `llama/generation.py` users would run.

Each batch is left-padded to its longest prompt, prefilled in one forward pass over a dense
per-batch KV cache, then decoded one token per row per step until its longest output is
done. Rows that asked for fewer tokens keep computing (that is the waste continuous
batching removes); only the tokens each request asked for count as useful.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class DenseLlama(nn.Module):
    """Llama with Meta's parameter names and a dense [batch, max_len] KV cache per layer."""

    def __init__(
        self,
        params: dict,
        weights: dict[str, torch.Tensor],
        max_len: int,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.n_layers = int(params["n_layers"])
        self.n_heads = int(params["n_heads"])
        self.n_kv_heads = int(params.get("n_kv_heads") or self.n_heads)
        self.dim = weights["tok_embeddings.weight"].shape[1]
        self.head_dim = self.dim // self.n_heads
        self.eps = float(params.get("norm_eps", 1e-5))
        self.device = torch.device(device)
        self.w = {name: t.float().to(self.device) for name, t in weights.items()}
        theta = float(params.get("rope_theta", 10000.0))
        freqs = 1.0 / theta ** (torch.arange(0, self.head_dim, 2).double() / self.head_dim)
        angles = torch.outer(torch.arange(max_len).double(), freqs)
        rope = torch.polar(torch.ones_like(angles), angles).to(torch.complex64)
        self.rope = rope.to(self.device)
        self.max_len = max_len
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def load(cls, model_dir: Path, max_len: int, device: str = "cpu") -> DenseLlama:
        params = json.loads((model_dir / "params.json").read_text())
        shard = sorted(model_dir.glob("consolidated.*.pth"))[0]
        weights = torch.load(shard, map_location="cpu", weights_only=True)
        return cls(params, weights, max_len, device)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * weight

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        b, s, h, d = x.shape
        # [B, S, H, D] -> [B, S, H, D/2] complex: dims (2i, 2i+1) are one number
        xc = torch.view_as_complex(x.reshape(b, s, h, d // 2, 2))
        rotated = xc * self.rope[positions].unsqueeze(2)  # [B, S, 1, D/2] broadcast over heads
        # [B, S, H, D/2] complex -> [B, S, H, D]
        return torch.view_as_real(rotated).reshape(b, s, h, d)

    def reset(self, batch_size: int) -> None:
        shape = (batch_size, self.max_len, self.n_kv_heads, self.head_dim)
        self.cache = [
            (torch.zeros(shape, device=self.device), torch.zeros(shape, device=self.device))
            for _ in range(self.n_layers)
        ]

    def forward(
        self,
        tokens: torch.Tensor,  # [B, S]
        positions: torch.Tensor,  # [B, S] rope positions (pads: 0)
        start: int,  # cache slot of tokens[:, 0]
        mask: torch.Tensor,  # [B, 1, S, start + S] True where a query may see a key
    ) -> torch.Tensor:  # [B, vocab] logits of the last position
        b, s = tokens.shape
        end = start + s
        h = self.w["tok_embeddings.weight"][tokens]  # [B, S, dim]
        for i in range(self.n_layers):
            p = f"layers.{i}."
            x = self._norm(h, self.w[p + "attention_norm.weight"])
            # [B, S, heads * D] -> [B, S, heads, D]
            q = (x @ self.w[p + "attention.wq.weight"].T).view(b, s, self.n_heads, -1)
            k = (x @ self.w[p + "attention.wk.weight"].T).view(b, s, self.n_kv_heads, -1)
            v = (x @ self.w[p + "attention.wv.weight"].T).view(b, s, self.n_kv_heads, -1)
            q, k = self._rope(q, positions), self._rope(k, positions)
            k_cache, v_cache = self.cache[i]
            k_cache[:, start:end], v_cache[:, start:end] = k, v
            # [B, L, KV, D] -> [B, KV, L, D]; each KV head serves n_heads / n_kv_heads query
            # heads (enable_gqa shares them without copying the cache).
            keys = k_cache[:, :end].transpose(1, 2)
            values = v_cache[:, :end].transpose(1, 2)
            attn = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=True
            )
            # [B, heads, S, D] -> [B, S, heads * D]
            attn = attn.transpose(1, 2).reshape(b, s, -1)
            h = h + attn @ self.w[p + "attention.wo.weight"].T
            x = self._norm(h, self.w[p + "ffn_norm.weight"])
            gate = F.silu(x @ self.w[p + "feed_forward.w1.weight"].T)
            up = x @ self.w[p + "feed_forward.w3.weight"].T
            h = h + (gate * up) @ self.w[p + "feed_forward.w2.weight"].T
        last = self._norm(h[:, -1], self.w["norm.weight"])
        return last @ self.w["output.weight"].T


@torch.inference_mode()
def generate_batch(
    model: DenseLlama, prompts: list[list[int]], max_tokens: list[int]
) -> list[list[int]]:
    """Greedy, EOS ignored; returns each request's first `max_tokens[i]` tokens."""
    b = len(prompts)
    width = max(len(p) for p in prompts)
    num_steps = max(max_tokens)
    device = model.device
    pads = torch.tensor([width - len(p) for p in prompts], device=device)  # [B]
    tokens = torch.zeros(b, width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = torch.tensor(prompt)
    tokens = tokens.to(device)
    model.reset(b)
    slots = torch.arange(width + num_steps, device=device)
    key_real = slots[None, :] >= pads[:, None]  # [B, L] False on pad slots
    # Pad queries see themselves only, so no row of the mask is empty.
    causal = slots[None, :width, None] >= slots[None, None, :width]  # [1, S, S]
    own = torch.eye(width, dtype=torch.bool, device=device)[None]
    prefill_mask = (causal & key_real[:, None, :width]) | own  # [B, S, S]
    positions = (slots[None, :width] - pads[:, None]).clamp(min=0)  # [B, S]
    logits = model(tokens, positions, 0, prefill_mask.unsqueeze(1))
    outputs = [logits.argmax(-1)]
    for step in range(1, num_steps):
        slot = width + step - 1
        mask = key_real[:, None, None, : slot + 1]  # [B, 1, 1, slot + 1]
        pos = (slot - pads)[:, None]  # [B, 1]
        logits = model(outputs[-1][:, None], pos, slot, mask)
        outputs.append(logits.argmax(-1))
    generated = torch.stack(outputs, dim=1).tolist()  # [B, num_steps]
    return [row[:n] for row, n in zip(generated, max_tokens, strict=True)]


def run_static_batches(
    model: DenseLlama, prompts: list[list[int]], max_tokens: list[int], batch_size: int
) -> list[list[int]]:
    """The workload in arrival order, `batch_size` requests at a time."""
    outputs: list[list[int]] = []
    for first in range(0, len(prompts), batch_size):
        batch = slice(first, first + batch_size)
        outputs += generate_batch(model, prompts[batch], max_tokens[batch])
    return outputs
