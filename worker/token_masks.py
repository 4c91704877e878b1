"""Structured output on the worker: each step's packed allowed-token bits (StepInput's
TokenMasks, computed by the engine's grammar matchers) applied to the logits rows they name.

A disallowed token's logit becomes -inf in the raw logits, before anything else shapes them,
so temperature, min-p, top-k, top-p, the penalties and the biases all work within what the
grammar allows, and the logprobs reported are those of the model's distribution over the
allowed tokens. Constrained and unconstrained rows share the step; only the named rows change.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from contract.step import TokenMasks


def apply_token_masks(logits: torch.Tensor, rows: list[int], masks: TokenMasks) -> None:
    """Set to -inf, in place, every logit of `rows[i]` (a row of `logits` [num_rows, vocab])
    whose token is not allowed by row i of `masks`."""
    if not rows:
        return
    vocab = logits.shape[-1]
    # Unpacked on the host (numpy's unpackbits is one fast pass), little-endian bit order,
    # the bits inverted first: True where a token is forbidden.
    packed = np.frombuffer(masks.bits, dtype=np.uint8)
    forbidden = np.unpackbits(~packed, bitorder="little").view(np.bool_)
    forbidden = forbidden.reshape(len(rows), -1)[:, :vocab]
    if logits.device.type == "cpu" and logits.is_contiguous():
        # In numpy, on this thread: a few small torch ops would each wake the intra-op thread
        # pool, which costs more than the work on a busy CPU.
        if rows != list(range(logits.shape[0])):  # some rows unconstrained: forbid nothing
            every_row = np.zeros(logits.shape, dtype=np.bool_)
            every_row[rows] = forbidden
            forbidden = every_row
        np.copyto(logits.numpy(), -np.inf, where=forbidden)
        return
    masked = torch.from_numpy(forbidden).to(logits.device, non_blocking=True)
    index = torch.tensor(rows, dtype=torch.long).to(logits.device, non_blocking=True)
    logits.index_copy_(0, index, logits.index_select(0, index).masked_fill_(masked, -math.inf))
