"""Incremental detokenization: text deltas that concatenate to what a full decode gives.

Decoding one token at a time is wrong in two ways: a SentencePiece piece's leading space
("▁the") is dropped when the piece starts the decoded text, and a character can be split over
several tokens: byte-fallback pieces (<0xE4><0xBD><0xA0>), or byte-level BPE tokens (Llama 3,
SmolLM: "ä½" + "ł" is 你). So the detokenizer decodes the tokens not yet emitted as a window
behind a fixed anchor token (which keeps their spaces), and keeps the window while its text
ends in an incomplete character (U+FFFD): the complete characters before it are emitted, the
broken one waits for its last byte. Each step costs the window's length, not the whole text's.
"""

from __future__ import annotations

from modelfiles.tokenizer import Tokenizer

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Text of a request's output as it grows.

    With `context_ids` (the prompt), the text is what the output adds to the context's text:
    the concatenated deltas equal `decode(context + output)[len(decode(context)):]`, so a
    continuation keeps its leading space. Without context they equal `decode(output)`.
    """

    def __init__(self, tokenizer: Tokenizer, context_ids: list[int] | None = None) -> None:
        self._tokenizer = tokenizer
        self._anchor_ids = [tokenizer.anchor_id()]
        self._anchor_len = len(tokenizer.decode(self._anchor_ids))
        # Until some text exists, SentencePiece drops leading spaces: while the context has no
        # text, decode from its start without the anchor, exactly as a full decode does.
        self._at_start = not (context_ids and tokenizer.decode(context_ids))
        self._ids: list[int] = list(context_ids or []) if self._at_start else []
        self._num_emitted = 0  # characters of the window's text already returned

    def add(self, token_ids: list[int], final: bool = False) -> str:
        """Feed new token ids; return the text they complete. With `final`, flush even an
        incomplete trailing character."""
        self._ids.extend(token_ids)
        if not self._ids:
            return ""
        if self._at_start:
            text = self._tokenizer.decode(self._ids)
            if not text and not final:
                return ""  # only spaces or control tokens so far: keep them in the window
        else:
            text = self._tokenizer.decode(self._anchor_ids + self._ids)[self._anchor_len :]
        if text.endswith(REPLACEMENT_CHAR) and not final:
            # The last character waits for the rest of its bytes; what precedes it is final.
            stable = text.rstrip(REPLACEMENT_CHAR)
            new = stable[self._num_emitted :]
            self._num_emitted = max(self._num_emitted, len(stable))
            return new
        new = text[self._num_emitted :]
        self._at_start = False
        self._ids = []
        self._num_emitted = 0
        return new
