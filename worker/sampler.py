"""Sampling and logprobs over a batch of logit rows.

Each row gets its own temperature, top-k and top-p, and one uniform number in [0, 1) chosen
on the host: for a seeded request it is a hash of (seed, position), so its tokens do not
depend on what it was batched with. The token is then drawn by inverting the cumulative
distribution with that number. Logprobs always come from the raw logits (float32
log-softmax), as Meta's `generate` reports them, not from the shaped distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_TOP_LOGPROBS = 20
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class SamplingRows:
    """Per-row settings for one batch of logits rows (host lists, one entry per row)."""

    temperatures: list[float]  # 0 means greedy
    top_ks: list[int]  # 0 keeps every token
    top_ps: list[float]  # 1 keeps every token
    uniforms: list[float]  # the row's random number in [0, 1); unused for greedy rows


def seeded_uniform(seed: int, position: int) -> float:
    """A number in [0, 1) that depends only on (seed, position) (splitmix64 mixing)."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ (position & _MASK64)) >> 11) * 2.0**-53


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample(logits: torch.Tensor, rows: SamplingRows) -> torch.Tensor:
    """logits [num_rows, vocab] float32 -> sampled token ids [num_rows]."""
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, t in enumerate(rows.temperatures) if t > 0]
    if not random_rows:
        return tokens
    device = logits.device
    index = torch.tensor(random_rows, device=device)

    def per_row(values: list, dtype: torch.dtype) -> torch.Tensor:  # [num_random, 1]
        return torch.tensor([values[i] for i in random_rows], dtype=dtype, device=device)[:, None]

    scaled = logits.index_select(0, index) / per_row(rows.temperatures, torch.float32)
    filtered = any(rows.top_ks[i] > 0 or rows.top_ps[i] < 1.0 for i in random_rows)
    if filtered:
        # Sorted descending, top-k is a prefix and top-p (Meta's sample_top_p) a shorter one.
        scaled, order = scaled.sort(dim=-1, descending=True, stable=True)
        ranks = torch.arange(scaled.shape[-1], device=device)
        top_k = per_row(rows.top_ks, torch.long)
        scaled = scaled.masked_fill((top_k > 0) & (ranks >= top_k), float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if filtered:
        # Drop a token once the mass of the tokens before it already exceeds p.
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before > per_row(rows.top_ps, torch.float32), 0.0)
    cdf = probs.cumsum(dim=-1)
    target = per_row(rows.uniforms, torch.float32) * cdf[:, -1:]
    # First index whose cumulative mass exceeds the target: a token with no mass is never
    # picked, except past the end through rounding, which the clamp below prevents.
    picked = torch.searchsorted(cdf, target, right=True)
    last_kept = torch.where(probs > 0, torch.arange(probs.shape[-1], device=device), 0)
    picked = torch.minimum(picked, last_kept.amax(dim=-1, keepdim=True))
    if filtered:
        picked = order.gather(-1, picked)
    tokens[index] = picked.squeeze(-1)
    return tokens


@dataclass(slots=True)
class TokenLogprobs:
    logprobs: torch.Tensor  # [num_rows] logprob of the chosen token of each row
    top_ids: torch.Tensor  # [num_rows, k] most likely tokens, best first
    top_logprobs: torch.Tensor  # [num_rows, k]


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, k: int) -> TokenLogprobs:
    """Logprob of `token_ids` [num_rows] under the raw logits [num_rows, vocab], and the top k."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, token_ids[:, None]).squeeze(-1)
    top_logprobs, top_ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return TokenLogprobs(logprobs=chosen, top_ids=top_ids, top_logprobs=top_logprobs)
