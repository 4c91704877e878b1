"""Open a GGUF file with the `gguf` package and read its metadata as Python values. Imports
no torch (the `gguf` package reads with numpy), so the tokenizer side can use it too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfiles.model_source import UnreadableModelError

# Large arrays read only when asked for (the tokenizer's vocabulary).
VOCAB_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
)


def open_gguf(path: str | Path) -> Any:  # -> gguf.GGUFReader
    from gguf import GGUFReader

    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError... for a broken file
        raise UnreadableModelError(
            f"{path}: cannot read the GGUF file, it is truncated or corrupt ({exc})"
        ) from exc


def gguf_metadata(reader: Any, with_vocab: bool = False) -> dict[str, Any]:
    """Every key of the file's header with its value (arrays as lists). The vocabulary
    arrays are left out unless `with_vocab`."""
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or (name in VOCAB_ARRAYS and not with_vocab):
            continue
        try:
            metadata[name] = field.contents()
        except (UnicodeDecodeError, ValueError) as exc:
            raise UnreadableModelError(
                f"{reader.data.filename}: cannot read metadata key {name} ({exc})"
            ) from exc
    return metadata
