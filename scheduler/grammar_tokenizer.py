"""The model's vocabulary as the grammar library reads it (llguidance's LLTokenizer).

A Hugging Face tokenizer (tokenizer.json, or a GGUF `gpt2` vocabulary rebuilt as one) is
handed over whole, as tokenizer.json text. A SentencePiece one goes as the bytes each token
stands for. The model's output rows
may outnumber the tokenizer's tokens (padded embeddings): the extra ids stand for no text, so
no grammar ever allows them. EOS ends a constrained output only where its grammar may end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelfiles.tokenizer import Tokenizer


def grammar_tokenizer(tokenizer: Tokenizer, vocab_size: int, eos_ids: tuple[int, ...]) -> Any:
    import llguidance

    n_vocab = max(vocab_size, tokenizer.vocab_size)
    to_json = getattr(tokenizer, "to_json", None)
    if to_json is not None:
        return llguidance.LLTokenizer(to_json(), n_vocab=n_vocab, eos_token=list(eos_ids))
    token_bytes = getattr(tokenizer, "token_bytes", None)
    if token_bytes is None:
        raise TypeError(f"{tokenizer} cannot say what bytes its tokens stand for")
    vocabulary = _Vocabulary(tokenizer, token_bytes(), eos_ids)
    result = llguidance.LLTokenizer(
        llguidance.TokenizerWrapper(vocabulary), n_vocab=n_vocab, eos_token=list(eos_ids)
    )
    # SentencePiece puts a space before the text it encodes; the strings a grammar forces
    # come mid-text, so they are split by the vocabulary itself, longest token first.
    vocabulary.encode = result.greedy_tokenize
    return result


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads of a tokenizer."""

    def __init__(self, tokenizer: Tokenizer, tokens: list[bytes], eos_ids: tuple[int, ...]):
        self.tokens = tokens
        self.eos_token_id = eos_ids[0]
        self.bos_token_id = tokenizer.bos_id
        self.special_token_ids = [i for i, t in enumerate(tokens) if t.startswith(b"\xff")]
        self.encode: Callable[[str], list[int]] = lambda text: []

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("takes text")  # llguidance then always passes text
        return self.encode(text)
