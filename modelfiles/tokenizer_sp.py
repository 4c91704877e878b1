"""SentencePiece tokenizers: a `tokenizer.model` file (Llama 1 and 2, BOS=1, EOS=2, no pad),
or a model proto built from a GGUF `llama` vocabulary (modelfiles/tokenizer_gguf.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from modelfiles.tokenizer import Tokenizer, TokenizerError
from modelfiles.tokenizer_hf import read_hf_settings


class SentencePieceTokenizer(Tokenizer):
    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_proto: bytes | None = None,
        extra_eos_ids: Sequence[int] = (),
        add_bos: bool = True,
        chat_template: str | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or str(model_path)
        try:
            if model_proto is not None:
                self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
            else:
                self._sp = spm.SentencePieceProcessor(model_file=str(model_path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"{self.name}: not a SentencePiece model ({exc})") from exc
        sp = self._sp
        self.vocab_size = sp.vocab_size()
        self.bos_id = sp.bos_id() if sp.bos_id() >= 0 else None
        eos = [sp.eos_id()] if sp.eos_id() >= 0 else []
        self.eos_ids = tuple(dict.fromkeys([*eos, *extra_eos_ids]))
        self.add_bos = add_bos
        self.chat_template = chat_template
        self.bos_token = sp.id_to_piece(self.bos_id) if self.bos_id is not None else None
        self.eos_token = sp.id_to_piece(eos[0]) if eos else None
        # SentencePiece does not match control pieces written in text; Hugging Face's
        # tokenizers do, and chat templates write "<s>" and "</s>" into the prompt.
        controls = {sp.id_to_piece(i): i for i in range(self.vocab_size) if sp.is_control(i)}
        self._controls = controls
        longest_first = sorted(controls, key=len, reverse=True)
        self._control_re = (
            re.compile("(" + "|".join(map(re.escape, longest_first)) + ")") if controls else None
        )

    @classmethod
    def from_dir(cls, directory: Path) -> SentencePieceTokenizer:
        """tokenizer.model, with tokenizer_config.json / generation_config.json when present
        (a Hugging Face directory without tokenizer.json): BOS rule, EOS ids, chat template."""
        path = directory / "tokenizer.model"
        settings = read_hf_settings(directory)
        tokenizer = cls(
            path,
            add_bos=True if settings.add_bos is None else settings.add_bos,
            chat_template=settings.chat_template,
        )
        tokenizer.eos_ids = tuple(dict.fromkeys([*tokenizer.eos_ids, *settings.eos_ids]))
        tokenizer.sampling_defaults = settings.sampling_defaults
        return tokenizer

    def __str__(self) -> str:
        return self.name

    def _encode(self, text: str) -> list[int]:
        if self._control_re is None:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, part in enumerate(self._control_re.split(text)):
            if i % 2:
                ids.append(self._controls[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._sp.decode(list(token_ids))

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(token_id)

    def anchor_id(self) -> int:
        sp = self._sp
        for token_id in sp.encode("a"):
            if sp.decode([token_id]).strip():
                return token_id
        for token_id in range(self.vocab_size):
            special = sp.is_control(token_id) or sp.is_byte(token_id) or sp.is_unknown(token_id)
            if not special and sp.decode([token_id]).strip():
                return token_id
        raise TokenizerError(f"{self.name} has no token that decodes to text")
