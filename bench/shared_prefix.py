"""The shared-prefix workload of the router benchmark and its tests, and a client that drives
it: `num_prefixes` prefixes of `prefix_len` random tokens, `per_prefix` requests each on
average (the prefix then a suffix of its own; with `hot_share`, one prefix takes that share
of them), in shuffled order, sent `concurrency` at a time as streams.
No torch here: the tests run it against servers in their own process.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from client import AsyncClient

FIRST_ORDINARY_ID = 3  # <unk>, <s>, </s> come first in SentencePiece Llama vocabularies


@dataclass(slots=True, frozen=True)
class SharedPrefixWorkload:
    num_prefixes: int = 8
    prefix_len: int = 256
    per_prefix: int = 8
    suffix_len: int = 8
    max_tokens: int = 4
    vocab_size: int = 512
    seed: int = 0
    # Skew: this share of all requests use prefix 0, the rest spread over the others.
    hot_share: float = 0.0

    @property
    def num_requests(self) -> int:
        return self.num_prefixes * self.per_prefix

    def prefix_of_each(self) -> list[int]:
        num_hot = round(self.hot_share * self.num_requests)
        if num_hot == 0 or self.num_prefixes == 1:
            return [i % self.num_prefixes for i in range(self.num_requests)]
        rest = range(self.num_requests - num_hot)
        return [0] * num_hot + [1 + i % (self.num_prefixes - 1) for i in rest]

    def prompts(self) -> list[list[int]]:
        rng = random.Random(self.seed)

        def tokens(num: int) -> list[int]:
            return [rng.randrange(FIRST_ORDINARY_ID, self.vocab_size) for _ in range(num)]

        prefixes = [tokens(self.prefix_len) for _ in range(self.num_prefixes)]
        prompts = [prefixes[i] + tokens(self.suffix_len) for i in self.prefix_of_each()]
        rng.shuffle(prompts)
        return prompts


@dataclass(slots=True)
class RunResult:
    ttfts: list[float] = field(default_factory=list)  # seconds, one per completed request
    e2es: list[float] = field(default_factory=list)
    num_output_tokens: int = 0
    num_failed: int = 0
    duration: float = 0.0  # first send to last reply

    @property
    def median_ttft_ms(self) -> float:
        return statistics.median(self.ttfts) * 1000 if self.ttfts else float("nan")

    @property
    def p90_ttft_ms(self) -> float:
        if len(self.ttfts) < 2:
            return self.median_ttft_ms
        return statistics.quantiles(self.ttfts, n=10)[-1] * 1000

    @property
    def median_e2e_ms(self) -> float:
        return statistics.median(self.e2es) * 1000 if self.e2es else float("nan")

    @property
    def requests_per_s(self) -> float:
        return len(self.e2es) / self.duration if self.duration else 0.0

    @property
    def output_tokens_per_s(self) -> float:
        return self.num_output_tokens / self.duration if self.duration else 0.0


async def drive(
    target: str,
    prompts: Sequence[str | list[int]],
    max_tokens: int,
    concurrency: int,
    timeout: float = 120.0,
) -> RunResult:
    """Send every prompt (token ids, or text the server tokenizes), greedy, EOS ignored, at
    most `concurrency` in flight."""
    result = RunResult()
    slots = asyncio.Semaphore(concurrency)
    async with AsyncClient(target, timeout=timeout) as client:

        async def one(prompt: str | list[int]) -> None:
            async with slots:
                sent = time.perf_counter()
                first: float | None = None
                num_tokens = 0
                try:
                    async for delta in client.generate_stream(
                        prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True
                    ):
                        if delta.token_ids and first is None:
                            first = time.perf_counter() - sent
                        num_tokens += len(delta.token_ids)
                except Exception:
                    result.num_failed += 1
                    return
                result.ttfts.append(first if first is not None else float("nan"))
                result.e2es.append(time.perf_counter() - sent)
                result.num_output_tokens += num_tokens

        start = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        result.duration = time.perf_counter() - start
    return result
