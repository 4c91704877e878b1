"""The offline workloads: random token-id prompts with lengths drawn uniformly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# SentencePiece Llama vocabularies put <unk>, <s>, </s> at 0, 1, 2; prompts avoid them.
FIRST_ORDINARY_ID = 3


@dataclass(slots=True)
class Workload:
    prompts: list[list[int]]
    max_tokens: list[int]  # each request generates exactly this many (EOS ignored)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.max_tokens)

    def head(self, num: int) -> Workload:
        return Workload(self.prompts[:num], self.max_tokens[:num])


def random_tokens(rng: np.random.Generator, vocab_size: int, num: int) -> list[int]:
    return rng.integers(FIRST_ORDINARY_ID, vocab_size, size=num).tolist()


def uniform_workload(
    num_requests: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    vocab_size: int,
    seed: int,
) -> Workload:
    """Prompt and output lengths uniform over the inclusive ranges."""
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(prompt_range[0], prompt_range[1] + 1, size=num_requests)
    output_lens = rng.integers(output_range[0], output_range[1] + 1, size=num_requests)
    prompts = [random_tokens(rng, vocab_size, int(n)) for n in prompt_lens]
    return Workload(prompts, output_lens.tolist())
