"""The SentencePiece tokenizer of a Llama model (BOS=1, EOS=2, no pad in Meta's files)."""

from __future__ import annotations

from pathlib import Path

import sentencepiece as spm


class Tokenizer:
    def __init__(self, model_path: str | Path, model_proto: bytes | None = None) -> None:
        """Reads the file at `model_path`; with `model_proto`, that file's bytes as they came
        from elsewhere (a remote worker's Info), and `model_path` only names where."""
        self.model_path = Path(model_path)
        if model_proto is None:
            self._sp = spm.SentencePieceProcessor(model_file=str(self.model_path))
        else:
            self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size: int = self._sp.vocab_size()
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> Tokenizer:
        path = Path(model_dir) / "tokenizer.model"
        if not path.is_file():
            raise FileNotFoundError(f"no SentencePiece tokenizer at {path}")
        return cls(path)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`, with BOS first when `add_bos` (as a text prompt gets)."""
        ids = self._sp.encode(text)
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, token_ids: list[int]) -> str:
        """Text of the ids; control tokens (BOS, EOS) decode to nothing."""
        return self._sp.decode(token_ids)

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def anchor_id(self) -> int:
        """A token that decodes to visible text. Decoding it in front of other tokens makes
        SentencePiece treat them as mid-text, so it keeps their leading spaces."""
        sp = self._sp
        for token_id in sp.encode("a"):
            if sp.decode([token_id]).strip():
                return token_id
        for token_id in range(self.vocab_size):
            special = sp.is_control(token_id) or sp.is_byte(token_id) or sp.is_unknown(token_id)
            if not special and sp.decode([token_id]).strip():
                return token_id
        raise ValueError(f"{self.model_path} has no token that decodes to text")
