"""Sampling and logprobs over a batch of logit rows.

Each row gets its own temperature, min-p, top-k and top-p, and one uniform number in [0, 1)
chosen on the host: for a seeded request it is a hash of (seed, position), so its tokens do
not depend on what it was batched with. The token is then drawn by inverting the cumulative
distribution with that number. Logprobs always come from the raw logits (float32
log-softmax), as Meta's `generate` reports them, not from the shaped distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from contract.sampling import SamplingParams
from worker.cpu_kernels import load_cpu_kernels
from worker.device_io import to_device

# Candidates taken first for top-k / top-p rows; more only when they do not cover the row.
MIN_CANDIDATES = 64
_MAX_UNIFORM = 1.0 - 2.0**-23
_MASK64 = (1 << 64) - 1


@dataclass(slots=True)
class SamplingRows:
    """What one batch of logits rows is sampled with: one entry per row."""

    params: list[SamplingParams]  # each row's request's settings (floats in float32)
    uniforms: list[float]  # the row's random number in [0, 1); unused for greedy rows

    def filters(self, row: int) -> bool:
        """Whether the row draws from fewer than all tokens (top-k, top-p, min-p)."""
        params = self.params[row]
        return params.top_k > 0 or params.top_p < 1.0 or params.min_p > 0


def seeded_uniform(seed: int, position: int) -> float:
    """A number in [0, 1) that depends only on (seed, position) (splitmix64 mixing)."""
    return (_splitmix64(_splitmix64(seed & _MASK64) ^ (position & _MASK64)) >> 11) * 2.0**-53


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def greedy_and_finite(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's greedy token (its first maximum) [num_rows] and whether the row's sum is
    finite [num_rows]: one pass over the logits on the CPU (worker/csrc/greedy_rows_cpu.cpp)."""
    if logits.device.type == "cpu" and logits.stride(-1) == 1 and load_cpu_kernels():
        return torch.ops.loom.greedy_rows(logits)
    # max's indices, not argmax: the same first maximum, several times faster on CPU.
    return logits.max(dim=-1).indices, torch.isfinite(logits.sum(dim=-1))


def sample(
    logits: torch.Tensor, rows: SamplingRows, greedy: torch.Tensor | None = None
) -> torch.Tensor:
    """logits [num_rows, vocab] float32 -> sampled token ids [num_rows]. `greedy`: each row's
    first maximum when the caller has it already (greedy_and_finite)."""
    # max's indices, not argmax: the same first maximum, several times faster on CPU.
    tokens = logits.max(dim=-1).indices if greedy is None else greedy
    random_rows = [i for i, params in enumerate(rows.params) if params.temperature > 0]
    plain = [i for i in random_rows if not rows.filters(i)]
    filtered = [i for i in random_rows if rows.filters(i)]
    if plain:
        index, scaled, uniforms = _scaled_rows(logits, rows, plain)
        tokens[index] = _inverse_cdf(torch.softmax(scaled, dim=-1), uniforms)
    if filtered:
        index, scaled, uniforms = _scaled_rows(logits, rows, filtered)
        params = [rows.params[i] for i in filtered]
        top_k = _column([p.top_k for p in params], torch.long, logits.device)
        top_p = _column([p.top_p for p in params], torch.float32, logits.device)
        min_p = _column([p.min_p for p in params], torch.float32, logits.device)
        max_top_k = max(p.top_k for p in params)
        tokens[index] = _draw_filtered(scaled, uniforms, top_k, top_p, min_p, max_top_k)
    return tokens


def _column(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return to_device(values, dtype, device)[:, None]  # [rows, 1]


def _scaled_rows(
    logits: torch.Tensor, rows: SamplingRows, index: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen rows' logits / temperature [n, vocab] and their uniforms [n, 1]."""
    device = logits.device
    index_t = to_device(index, torch.long, device)
    temperatures = _column([rows.params[i].temperature for i in index], torch.float32, device)
    # Below 1 - 2^-23 the float32 product u * total stays under total, so a draw never lands
    # past the last token with mass.
    uniforms = _column([min(rows.uniforms[i], _MAX_UNIFORM) for i in index], torch.float32, device)
    return index_t, logits.index_select(0, index_t) / temperatures, uniforms


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Index of the first entry whose cumulative mass exceeds u * total mass: [rows].

    A token with no mass adds nothing to the running sum, so it is never picked.
    """
    cdf = probs.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True).squeeze(-1)
    # A row with mass never reaches the end (u * total < total); a NaN row can, and its
    # token must still be an index (the step fails only that row, worker/step_output.py).
    return picked.clamp_(max=probs.shape[-1] - 1)


def _draw_filtered(
    scaled: torch.Tensor,  # [rows, vocab] logits / temperature
    uniforms: torch.Tensor,  # [rows, 1]
    top_k: torch.Tensor,  # [rows, 1], 0 = off
    top_p: torch.Tensor,  # [rows, 1], 1 = off
    min_p: torch.Tensor,  # [rows, 1], 0 = off
    max_top_k: int,  # the largest top_k among the rows, known on the host
) -> torch.Tensor:
    """Min-p, then top-k, then top-p (Meta's sample_top_p), each on the distribution the
    previous one renormalised, as vLLM orders them.

    Sorting a whole vocabulary row is slow on CPU, so candidates come from topk: k rows are
    exact once the candidates cover k; a min-p row once its last candidate falls below the
    threshold; a top-p row once the candidates' mass exceeds p (the next token's preceding
    mass would exceed p too). Otherwise it retries with more.
    """
    vocab = scaled.shape[-1]
    log_total = torch.logsumexp(scaled, dim=-1, keepdim=True)
    num_candidates = min(vocab, max(MIN_CANDIDATES, max_top_k))
    if scaled.device.type != "cpu":
        # A GPU sorts a whole row quickly, and asking whether the candidates suffice would
        # make the host wait for the device.
        num_candidates = vocab
    log_min_p = torch.log(min_p)  # -inf where off: every token clears the threshold
    while True:
        candidates, candidate_ids = scaled.topk(num_candidates, dim=-1)  # best first
        # Min-p: p >= min_p * p_best, in logits: at least the best's plus log(min_p).
        above_min_p = candidates >= candidates[:, :1] + log_min_p
        probs = torch.exp(candidates - log_total)
        ranks = torch.arange(num_candidates, device=scaled.device)
        probs = probs.masked_fill(~above_min_p | ((top_k > 0) & (ranks >= top_k)), 0.0)
        # Min-p and top-k renormalise to the tokens they keep; otherwise the candidates keep
        # their true mass.
        renormalised = (top_k > 0) | (min_p > 0)
        probs = probs / torch.where(renormalised, probs.sum(-1, keepdim=True), 1.0)
        mass_before = probs.cumsum(dim=-1) - probs
        mass = probs.sum(dim=-1, keepdim=True)
        min_p_covered = ~above_min_p[:, -1:]
        covered = (top_k > 0) | torch.where(min_p > 0, min_p_covered, mass > top_p)
        if num_candidates == vocab or bool(covered.all()):
            break
        # Sorted, each further token weighs at most the last candidate, so 16x the candidates
        # hold at most 16x the mass: when that cannot reach p, go straight to the whole row.
        reachable = bool((covered | (16 * mass > top_p)).all())
        num_candidates = num_candidates * 16 if reachable else vocab
        num_candidates = min(vocab, num_candidates)
    probs = probs.masked_fill(mass_before > top_p, 0.0)
    picked = _inverse_cdf(probs, uniforms)
    return candidate_ids.gather(-1, picked[:, None]).squeeze(-1)


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
