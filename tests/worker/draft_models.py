"""Draft models for speculative decoding's tests, written next to the test's files: stories260K
disturbed (a draft of partial acceptance), stories260K with two output rows swapped (a
deliberately bad one), and a random model of its vocabulary."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import STORIES_DIR
from tests.worker.driver import read_meta_model
from worker.random_model import random_weights, write_meta_model

SMALL_PARAMS = {
    "dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 512,
    "multiple_of": 32, "norm_eps": 1e-5, "max_seq_len": 256,
}  # fmt: skip


def write_noisy_stories(out_dir: Path, noise: float, seed: int = 0) -> Path:
    """stories260K with every tensor moved by `noise` times its own spread, at random."""
    files = read_meta_model(STORIES_DIR)
    generator = torch.Generator().manual_seed(seed)
    weights = {
        name: w + noise * w.float().std() * torch.randn(w.shape, generator=generator)
        for name, w in files.weights.items()
    }
    return write_meta_model(out_dir, files.params, weights, STORIES_DIR / "tokenizer.model")


def write_swapped_stories(out_dir: Path, a: int, b: int) -> Path:
    """stories260K whose LM head scores token `a` as the model scores `b` and the other way
    round: where the model likes `b` best, this draft proposes `a`."""
    files = read_meta_model(STORIES_DIR)
    weights = dict(files.weights)
    output = weights["output.weight"].clone()
    output[[a, b]] = output[[b, a]]
    weights["output.weight"] = output
    return write_meta_model(out_dir, files.params, weights, STORIES_DIR / "tokenizer.model")


def write_random_draft(out_dir: Path, params: dict | None = None, seed: int = 7) -> Path:
    """A random-weight Llama, stories260K's vocabulary unless `params` says otherwise."""
    params = params or SMALL_PARAMS
    weights = random_weights(params, seed)
    return write_meta_model(out_dir, params, weights, STORIES_DIR / "tokenizer.model")
