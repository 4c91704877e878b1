"""Structured output on the worker: each step's packed allowed-token bits (StepInput's
TokenMasks, computed by the engine's grammar matchers) applied to the logits rows they name.

A disallowed token's logit becomes -inf in the raw logits, before anything else shapes them,
so temperature, min-p, top-k, top-p, the penalties and the biases all work within what the
grammar allows, and the logprobs reported are those of the model's distribution over the
allowed tokens. Constrained and unconstrained rows share the step; only the named rows change.
"""

from __future__ import annotations

import numpy as np
import torch

from contract.step import TokenMasks


def apply_token_masks(logits: torch.Tensor, rows: list[int], masks: TokenMasks) -> None:
    """Set to -inf, in place, every logit of `rows[i]` (a row of `logits` [num_rows, vocab])
    whose token is not allowed by row i of `masks`."""
    if not rows:
        return
    vocab = logits.shape[-1]
    # Unpacked on the host (numpy's unpackbits is one fast pass), little-endian bit order.
    packed = np.frombuffer(masks.bits, dtype=np.uint8)
    unpacked = np.unpackbits(packed, bitorder="little").view(np.bool_).reshape(len(rows), -1)
    allowed = torch.from_numpy(unpacked)[:, :vocab].to(logits.device, non_blocking=True)
    if rows == list(range(logits.shape[0])):  # every row constrained: no gather
        logits.masked_fill_(~allowed, float("-inf"))
        return
    index = torch.tensor(rows, dtype=torch.long).to(logits.device, non_blocking=True)
    masked = logits.index_select(0, index).masked_fill_(~allowed, float("-inf"))
    logits.index_copy_(0, index, masked)
