"""Hugging Face `tokenizers` over a tokenizer.json, with what tokenizer_config.json,
generation_config.json and config.json say about BOS, EOS and the chat template.

Byte-level BPE (Llama 3, SmolLM) decodes a character split over several tokens to U+FFFD
until its last byte arrives; the incremental detokenizer holds such text back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelfiles.tokenizer import Tokenizer, TokenizerError


@dataclass(slots=True)
class HFSettings:
    """The parts of a Hugging Face directory's JSON files a tokenizer needs."""

    add_bos: bool | None = None  # None: the file does not say
    bos_token: str | None = None
    eos_token: str | None = None
    eos_ids: tuple[int, ...] = ()  # from generation_config.json and config.json
    chat_template: str | None = None
    # The sampling the model's authors recommend (generation_config.json), by field name.
    sampling_defaults: dict[str, Any] = field(default_factory=dict)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TokenizerError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise TokenizerError(f"{path}: holds {type(data).__name__}, not an object")
    return data


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a token as "<s>" or as {"content": "<s>", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _chat_template(directory: Path, config: dict[str, Any]) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: "default"), or
    the chat_template.jinja file newer exports write beside it."""
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str):
        return template
    jinja_file = directory / "chat_template.jinja"
    return jinja_file.read_text(encoding="utf-8") if jinja_file.is_file() else None


# generation_config.json's keys that mean what the SamplingParams field of the same name
# means (transformers' GenerationConfig), with the values they may hold.
_SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "min_p": float,
                  "repetition_penalty": float}  # fmt: skip


def sampling_defaults(generation: dict[str, Any]) -> dict[str, Any]:
    """The sampling a generation_config.json recommends: its temperature, top_p, top_k,
    min_p and repetition_penalty, and greedy decoding where it says `do_sample: false` (as
    transformers decodes then, whatever temperature it also names)."""
    found: dict[str, Any] = {}
    for key, kind in _SAMPLING_KEYS.items():
        value = generation.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = kind(value)
    if generation.get("do_sample") is False:
        found["temperature"] = 0.0
    return found


def read_hf_settings(directory: Path) -> HFSettings:
    config = _read_json(directory / "tokenizer_config.json")
    generation = _read_json(directory / "generation_config.json")
    eos_ids = [
        *_ids(generation.get("eos_token_id")),
        *_ids(_read_json(directory / "config.json").get("eos_token_id")),
    ]
    add_bos = config.get("add_bos_token")
    return HFSettings(
        add_bos=add_bos if isinstance(add_bos, bool) else None,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
        eos_ids=tuple(dict.fromkeys(eos_ids)),
        chat_template=_chat_template(directory, config),
        sampling_defaults=sampling_defaults(generation),
    )


class HFTokenizer(Tokenizer):
    def __init__(
        self,
        tokenizer: Any,  # tokenizers.Tokenizer
        *,
        name: str,
        bos_token: str | None,
        eos_token: str | None,
        extra_eos_ids: Sequence[int] = (),
        add_bos: bool | None = None,
        chat_template: str | None = None,
        sampling_defaults: dict[str, Any] | None = None,
    ) -> None:
        self._tk = tokenizer
        self.sampling_defaults = dict(sampling_defaults or {})
        self.name = name
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = tokenizer.token_to_id(bos_token) if bos_token else None
        eos_id = tokenizer.token_to_id(eos_token) if eos_token else None
        eos = [eos_id] if eos_id is not None else []
        self.eos_ids = tuple(dict.fromkeys([*eos, *extra_eos_ids]))
        self.bos_token = bos_token if self.bos_id is not None else None
        self.eos_token = eos_token if eos_id is not None else None
        if add_bos is None:
            # The file does not say: the post-processor does what the model was trained with.
            with_specials = tokenizer.encode("", add_special_tokens=True).ids
            add_bos = self.bos_id is not None and with_specials[:1] == [self.bos_id]
        self.add_bos = add_bos
        self.chat_template = chat_template

    @classmethod
    def from_dir(cls, directory: Path) -> HFTokenizer:
        from tokenizers import Tokenizer as RustTokenizer

        path = directory / "tokenizer.json"
        try:
            tokenizer = RustTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise TokenizerError(f"{path}: not a tokenizers file ({exc})") from exc
        settings = read_hf_settings(directory)
        return cls(
            tokenizer,
            name=str(path),
            bos_token=settings.bos_token,
            eos_token=settings.eos_token,
            extra_eos_ids=settings.eos_ids,
            add_bos=settings.add_bos,
            chat_template=settings.chat_template,
            sampling_defaults=settings.sampling_defaults,
        )

    def __str__(self) -> str:
        return self.name

    def _encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tk.decode(list(token_ids), skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        return self._tk.id_to_token(token_id) or ""
