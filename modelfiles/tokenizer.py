"""The tokenizer seam: what the engine and the frontends need of a tokenizer, and which one a
model brings.

- SentencePiece `tokenizer.model` (Llama 1 and 2): modelfiles/tokenizer_sp.py.
- Hugging Face `tokenizer.json` with `tokenizer_config.json` (Llama 3, SmolLM, most
  fine-tunes; byte-level BPE or SentencePiece-style): modelfiles/tokenizer_hf.py.
- A GGUF file's own vocabulary, `llama` (SentencePiece) or `gpt2` (byte-level BPE) style:
  modelfiles/tokenizer_gguf.py.

Imports no torch: a scheduler host needs no tensor stack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelfiles.chat_template import LLAMA2_CHAT_TEMPLATE, render_chat
from modelfiles.model_source import UnreadableModelError, resolve_model


class TokenizerError(UnreadableModelError):
    """A tokenizer that cannot be loaded; the message names the file."""


class NoChatTemplateError(ValueError):
    """The model brings no chat template."""


class Tokenizer(ABC):
    """Text <-> token ids for one model.

    `eos_ids` holds every id that ends a sequence (Llama 3 has several: <|end_of_text|>,
    <|eom_id|>, <|eot_id|>), the model's own EOS first. `add_bos` says whether a text prompt
    gets BOS (Llama 2 and 3 do, SmolLM2 does not). Decoding drops special tokens (BOS, EOS,
    chat markers), as SentencePiece drops control tokens.
    """

    vocab_size: int
    bos_id: int | None
    eos_ids: tuple[int, ...]
    add_bos: bool
    chat_template: str | None = None
    bos_token: str | None = None  # the texts of BOS and EOS, for chat templates
    eos_token: str | None = None
    # The sampling the model's files recommend (generation_config.json), SamplingParams field
    # -> value: what a request that leaves a field unset gets, as in vLLM. Empty: none.
    sampling_defaults: Mapping[str, Any] = MappingProxyType({})

    @classmethod
    def from_model_dir(cls, model: str | Path) -> Tokenizer:
        """The tokenizer a `--model` brings (see `load_tokenizer`)."""
        return load_tokenizer(model)

    @property
    def eos_id(self) -> int | None:
        return self.eos_ids[0] if self.eos_ids else None

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`. BOS goes first when `add_bos`, or, when it is None, when the
        tokenizer adds it to a text prompt. Special tokens written in the text
        ("<|im_start|>") become their ids, as in Hugging Face's tokenizers."""
        ids = self._encode(text)
        if add_bos is None:
            add_bos = self.add_bos
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    @abstractmethod
    def _encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of the ids; special tokens decode to nothing."""

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """The vocabulary's own spelling of a token: "▁Once", "<0x0A>", "Ġthe"."""

    def anchor_id(self) -> int:
        """A token that decodes to visible text. Decoding it in front of other tokens makes
        a SentencePiece-style decoder treat them as mid-text, so it keeps their leading
        spaces (scheduler/detokenizer.py)."""
        for token_id in self._encode("a"):
            if self.decode([token_id]).strip():
                return token_id
        for token_id in range(self.vocab_size):
            if self.decode([token_id]).strip():
                return token_id
        raise TokenizerError(f"{self}: no token decodes to text")

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt text the model's chat template makes of `messages` ({"role",
        "content"} dicts). NoChatTemplateError when the model has none; ValueError for
        messages the template refuses."""
        if not self.chat_template:
            raise NoChatTemplateError("the model has no chat template")
        return render_chat(
            self.chat_template,
            messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True
    ) -> tuple[str, list[int]]:
        """The chat prompt and its ids. The template writes BOS itself where the model wants
        it, so none is added, as Hugging Face's apply_chat_template(tokenize=True) does."""
        text = self.apply_chat_template(messages, add_generation_prompt)
        return text, self.encode(text, add_bos=False)


def load_tokenizer(model: str | Path) -> Tokenizer:
    """The tokenizer of a `--model`: a GGUF file's vocabulary; in a directory,
    tokenizer.json (Hugging Face) before tokenizer.model (SentencePiece)."""
    source = resolve_model(model)
    if source.kind == "gguf":
        from modelfiles.tokenizer_gguf import gguf_tokenizer

        return gguf_tokenizer(source.path)
    directory = source.directory
    if (directory / "tokenizer.json").is_file():
        from modelfiles.tokenizer_hf import HFTokenizer

        return HFTokenizer.from_dir(directory)
    if (directory / "tokenizer.model").is_file():
        from modelfiles.tokenizer_sp import SentencePieceTokenizer

        tokenizer = SentencePieceTokenizer.from_dir(directory)
        # Meta's chat checkpoints (llama-2-7b-chat, ...) bring no template: Meta's format.
        if source.kind == "meta" and "chat" in directory.name.lower():
            tokenizer.chat_template = tokenizer.chat_template or LLAMA2_CHAT_TEMPLATE
        return tokenizer
    raise TokenizerError(
        f"{directory} has no tokenizer: neither tokenizer.json (Hugging Face) nor "
        "tokenizer.model (SentencePiece) is there"
    )
