"""Logprobs in OpenAI's two shapes: the legacy one of /v1/completions (`tokens`,
`token_logprobs`, `top_logprobs` as {token: logprob}, `text_offset`) and the chat one
(`content`: one entry per token with its `bytes` and `top_logprobs`).

A token's text is how it reads in the middle of a text (a SentencePiece piece keeps its
leading space); a token that holds only part of a character reads as U+FFFD. Text offsets
are where each token's text starts in the choice's text, from the same incremental decoding
that makes the text, so they stay right across multi-byte characters.
"""

from __future__ import annotations

from modelfiles.tokenizer import Tokenizer
from scheduler.detokenizer import IncrementalDetokenizer

TopEntries = list[tuple[int, float]]


class TokenTexts:
    """Token id -> its text in the middle of a text, cached."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._anchor = tokenizer.anchor_id()
        self._anchor_len = len(tokenizer.decode([self._anchor]))
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([self._anchor, token_id])[self._anchor_len :]
            self._cache[token_id] = text
        return text


class CompletionLogprobs:
    """One choice's legacy logprobs, built as its tokens arrive. `add` returns the part for
    the tokens just added (a stream sends each part; a response sends `full`)."""

    def __init__(self, texts: TokenTexts, tokenizer: Tokenizer) -> None:
        self._texts = texts
        self._tokenizer = tokenizer
        self._offset = 0
        self._detokenizer: IncrementalDetokenizer | None = None
        self._parts: list[dict[str, list]] = []

    def start(self, context_ids: list[int] | None, offset: int) -> None:
        """Tokens after this continue `context_ids`, their text starting at `offset`."""
        self._detokenizer = IncrementalDetokenizer(self._tokenizer, context_ids)
        self._offset = offset

    def add(
        self,
        token_ids: list[int],
        logprobs: list[float | None],
        tops: list[TopEntries | None],
    ) -> dict[str, list]:
        assert self._detokenizer is not None
        part: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": []}
        part["text_offset"] = []
        for i, token_id in enumerate(token_ids):
            text = self._texts(token_id)
            part["tokens"].append(text)
            part["token_logprobs"].append(logprobs[i] if i < len(logprobs) else None)
            part["text_offset"].append(self._offset)
            self._offset += len(self._detokenizer.add([token_id]))
            logprob = logprobs[i] if i < len(logprobs) else None
            top = tops[i] if i < len(tops) else None
            # None where the position has no logprob (the prompt's first token); with
            # logprobs=0 the chosen token alone.
            part["top_logprobs"].append(None if logprob is None else self._top(text, logprob, top))
        self._parts.append(part)
        return part

    def _top(self, chosen: str, logprob: float, top: TopEntries | None) -> dict[str, float]:
        # OpenAI's: the k likeliest tokens and, when not among them, the chosen one.
        entries = {self._texts(token_id): value for token_id, value in top or []}
        entries.setdefault(chosen, logprob)
        return entries

    def full(self) -> dict[str, list]:
        merged: dict[str, list] = {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []
        }  # fmt: skip
        for part in self._parts:
            for key, values in part.items():
                merged[key] += values
        return merged


def chat_logprobs(
    texts: TokenTexts, token_ids: list[int], logprobs: list[float], tops: list[TopEntries]
) -> list[dict]:
    """The chat shape's `content` entries of these tokens."""
    entries = []
    for i, token_id in enumerate(token_ids):
        text = texts(token_id)
        top = tops[i] if i < len(tops) else []
        entries.append(
            {
                "token": text,
                "logprob": logprobs[i],
                "bytes": list(text.encode()),
                "top_logprobs": [
                    {"token": t, "logprob": value, "bytes": list(t.encode())}
                    for t, value in ((texts(tid), value) for tid, value in top)
                ],
            }
        )
    return entries
