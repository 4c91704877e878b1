"""Prompt lookup: propose the tokens that followed the latest earlier occurrence of the
sequence's last n tokens, searched in its prompt and output. No model runs; summarising,
editing and code-rewriting workloads repeat spans of their prompt, and this finds them.
"""

from __future__ import annotations

from collections.abc import Sequence


class NgramProposer:
    """Longest pattern first: the last `max_n` tokens, then shorter ones down to `min_n`."""

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got {min_n} and {max_n}")
        self.min_n = min_n
        self.max_n = max_n

    def propose(self, token_ids: Sequence[int], k: int) -> list[int]:
        """Up to `k` tokens to follow `token_ids`; [] when the last tokens never occurred
        before."""
        num_tokens = len(token_ids)
        for n in range(min(self.max_n, num_tokens - 1), self.min_n - 1, -1):
            pattern = list(token_ids[-n:])
            last = pattern[-1]
            # `end` is one past an earlier occurrence; the latest one wins (the most local
            # context), and at least one token follows it.
            for end in range(num_tokens - 1, n - 1, -1):
                if token_ids[end - 1] == last and list(token_ids[end - n : end]) == pattern:
                    # What followed, up to the end: a period of a repetition, which goes on.
                    period = list(token_ids[end : end + k])
                    return (period * -(-k // len(period)))[:k]
        return []
