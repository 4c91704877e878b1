"""Synthetic workloads: random token-id prompts, and prompts that share a prefix.

Synthetic prompts are token ids drawn from the served model's vocabulary, sent as
`prompt_token_ids`, so every prompt is exactly as long as asked (text would change length
when the server tokenizes it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class SampleRequest:
    """One request of a workload, before it is sent."""

    prompt_len: int  # tokens the server will see (text prompts: their tokens + BOS)
    max_tokens: int
    prompt: str | None = None  # text, tokenized by the server
    prompt_token_ids: list[int] | None = None  # used as given, no BOS added
    ignore_eos: bool = False  # keep generating past EOS so the output reaches max_tokens
    deadline_ms: int | None = None  # sent as the request's deadline_ms (--deadlines)


@dataclass(slots=True, frozen=True)
class Vocabulary:
    """What the synthetic generators need to know about the served model."""

    vocab_size: int
    special_token_ids: frozenset[int]  # never drawn into a prompt (e.g. BOS, EOS)

    def ordinary_ids(self) -> np.ndarray:
        ids = np.arange(self.vocab_size)
        return ids[~np.isin(ids, list(self.special_token_ids))]


def length_range(length: int, range_ratio: float) -> tuple[int, int]:
    """Inclusive bounds of lengths drawn uniformly around `length`, +-`range_ratio` of it."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    low = max(1, math.floor(length * (1.0 - range_ratio)))
    high = math.ceil(length * (1.0 + range_ratio))
    return low, high


def _draw_lengths(num: int, length: int, range_ratio: float, rng: np.random.Generator) -> list[int]:
    low, high = length_range(length, range_ratio)
    return rng.integers(low, high + 1, size=num).tolist()


def random_requests(
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab: Vocabulary,
    rng: np.random.Generator,
) -> list[SampleRequest]:
    """Prompts of random tokens; lengths uniform in `length * (1 -+ range_ratio)`, exactly
    `input_len` / `output_len` when range_ratio is 0. EOS is ignored, so every output
    reaches its length and the server does exactly the work asked for."""
    pool = vocab.ordinary_ids()
    input_lens = _draw_lengths(num_requests, input_len, range_ratio, rng)
    output_lens = _draw_lengths(num_requests, output_len, range_ratio, rng)
    return [
        SampleRequest(
            prompt_len=n_in,
            max_tokens=n_out,
            prompt_token_ids=rng.choice(pool, size=n_in).tolist(),
            ignore_eos=True,
        )
        for n_in, n_out in zip(input_lens, output_lens, strict=True)
    ]


def shared_prefix_requests(
    num_requests: int,
    prefix_len: int,
    num_prefixes: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab: Vocabulary,
    rng: np.random.Generator,
) -> list[SampleRequest]:
    """Request i is prefix `i % num_prefixes` (prefix_len tokens) followed by its own random
    suffix of about `input_len` tokens: the workload a prefix cache is for (a shared system
    prompt or few-shot examples)."""
    if prefix_len < 1 or num_prefixes < 1:
        raise ValueError(
            f"prefix_len and num_prefixes must be >= 1, got {prefix_len}, {num_prefixes}"
        )
    pool = vocab.ordinary_ids()
    prefixes = [rng.choice(pool, size=prefix_len).tolist() for _ in range(num_prefixes)]
    suffix_lens = _draw_lengths(num_requests, input_len, range_ratio, rng)
    output_lens = _draw_lengths(num_requests, output_len, range_ratio, rng)
    requests = []
    for i, (n_suffix, n_out) in enumerate(zip(suffix_lens, output_lens, strict=True)):
        token_ids = prefixes[i % num_prefixes] + rng.choice(pool, size=n_suffix).tolist()
        requests.append(
            SampleRequest(
                prompt_len=len(token_ids),
                max_tokens=n_out,
                prompt_token_ids=token_ids,
                ignore_eos=True,
            )
        )
    return requests


def check_fits(requests: list[SampleRequest], max_model_len: int) -> None:
    """Refuse a workload the server would refuse request by request."""
    for i, req in enumerate(requests):
        if req.prompt_len + req.max_tokens > max_model_len:
            raise ValueError(
                f"request {i}: prompt {req.prompt_len} + max_tokens {req.max_tokens} tokens "
                f"exceeds the model's maximum length {max_model_len}; "
                "lower --input-len / --output-len / --range-ratio"
            )
