"""Workloads read from files: ShareGPT conversations and JSONL {"prompt", "max_tokens"}."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from loadtest.datasets import SampleRequest

# Text -> token ids without BOS (the harness asks the server's Tokenize RPC).
Tokenize = Callable[[str], list[int]]

# Conversations shorter than this on either side say little about serving; ShareGPT
# benchmarks conventionally drop them.
MIN_SHAREGPT_TOKENS = 4


def load_sharegpt(
    path: Path,
    num_requests: int,
    tokenize: Tokenize,
    max_model_len: int,
    rng: np.random.Generator,
    fixed_output_len: int | None = None,
) -> list[SampleRequest]:
    """The first human turn of each conversation is the prompt; the length of the first reply
    (or `fixed_output_len`) is max_tokens. Conversations are shuffled with `rng`; ones too
    short, or too long for the model, are dropped. When fewer usable conversations remain
    than requests asked for, they are reused in turn."""
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    order = rng.permutation(len(entries))
    usable: list[SampleRequest] = []
    for index in order.tolist():
        if len(usable) == num_requests:
            break
        turns = entries[index].get("conversations") or entries[index].get("conversation")
        if not turns or len(turns) < 2:
            continue
        prompt, reply = str(turns[0]["value"]), str(turns[1]["value"])
        prompt_len = len(tokenize(prompt)) + 1  # the server prepends BOS
        output_len = fixed_output_len or len(tokenize(reply))
        if prompt_len < MIN_SHAREGPT_TOKENS or output_len < MIN_SHAREGPT_TOKENS:
            continue
        if prompt_len + output_len > max_model_len:
            continue
        usable.append(SampleRequest(prompt_len=prompt_len, max_tokens=output_len, prompt=prompt))
    if not usable:
        raise ValueError(f"{path}: no usable conversation (need two turns of >= 4 tokens)")
    return [usable[i % len(usable)] for i in range(num_requests)]


def load_jsonl(
    path: Path, num_requests: int, tokenize: Tokenize, max_model_len: int
) -> list[SampleRequest]:
    """One request per line: {"prompt": str, "max_tokens": int}; blank lines are skipped.
    Lines are taken in order and reused from the top when the file has fewer."""
    usable: list[SampleRequest] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompt, max_tokens = record["prompt"], record["max_tokens"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{line_no}: expected {{'prompt', 'max_tokens'}}") from e
            if not isinstance(prompt, str) or not prompt:
                raise ValueError(f"{path}:{line_no}: 'prompt' must be a non-empty string")
            if not isinstance(max_tokens, int) or max_tokens < 1:
                raise ValueError(f"{path}:{line_no}: 'max_tokens' must be an integer >= 1")
            prompt_len = len(tokenize(prompt)) + 1  # the server prepends BOS
            if prompt_len + max_tokens > max_model_len:
                raise ValueError(
                    f"{path}:{line_no}: prompt {prompt_len} + max_tokens {max_tokens} tokens "
                    f"exceeds the model's maximum length {max_model_len}"
                )
            usable.append(
                SampleRequest(prompt_len=prompt_len, max_tokens=max_tokens, prompt=prompt)
            )
    if not usable:
        raise ValueError(f"{path}: no requests")
    return [usable[i % len(usable)] for i in range(num_requests)]
