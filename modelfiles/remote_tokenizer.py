"""The tokenizer of a remote worker's model, built from the files its Info carries."""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelfiles.tokenizer import Tokenizer, TokenizerError
from modelfiles.tokenizer_files import HF_TOKENIZER_FILE, SENTENCEPIECE_FILE, TOKENIZER_FILE_NAMES


def tokenizer_from_files(files: dict[str, bytes], where: str) -> Tokenizer:
    """ValueError, saying what was sent, when no tokenizer can be built from `files`."""
    unknown = sorted(set(files) - TOKENIZER_FILE_NAMES)
    if unknown:  # names become paths below: only the known ones
        raise ValueError(f"the worker at {where} sends unexpected tokenizer files {unknown}")
    try:
        if HF_TOKENIZER_FILE in files:
            from modelfiles.tokenizer_hf import HFTokenizer

            with tempfile.TemporaryDirectory(prefix="loom-tokenizer-") as tmp:
                for name, data in files.items():
                    (Path(tmp) / name).write_bytes(data)
                tokenizer = HFTokenizer.from_dir(Path(tmp))  # reads everything now
            tokenizer.name = f"{where}/{HF_TOKENIZER_FILE}"
            return tokenizer
        if files.get(SENTENCEPIECE_FILE):
            from modelfiles.tokenizer_sp import SentencePieceTokenizer

            return SentencePieceTokenizer(
                name=f"{where}/{SENTENCEPIECE_FILE}", model_proto=files[SENTENCEPIECE_FILE]
            )
    except TokenizerError as exc:
        raise ValueError(
            f"the tokenizer files the worker at {where} sends are unreadable: {exc}"
        ) from exc
    raise ValueError(
        f"the worker at {where} sends no tokenizer (got {sorted(files) or 'no files'}): serve "
        f"a model directory with {HF_TOKENIZER_FILE} or {SENTENCEPIECE_FILE} (a GGUF file's "
        "vocabulary cannot be sent)"
    )
