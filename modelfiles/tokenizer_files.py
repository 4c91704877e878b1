"""The files of a model directory that make its tokenizer, which a worker server hands the
scheduler (in Info) so that the scheduler host needs no model files. The engine reads
tokenizer.json (with the settings files beside it) before tokenizer.model; so does this."""

from __future__ import annotations

from pathlib import Path

from modelfiles.model_source import resolve_model

SENTENCEPIECE_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
# What modelfiles/tokenizer_hf.py reads besides tokenizer.json: BOS/EOS, added tokens, the
# chat template, and the extra EOS ids of generation_config.json and config.json.
HF_SETTINGS_FILES = ("tokenizer_config.json", "generation_config.json", "config.json")
TOKENIZER_FILE_NAMES = frozenset({SENTENCEPIECE_FILE, HF_TOKENIZER_FILE, *HF_SETTINGS_FILES})


def tokenizer_files(model: str | Path) -> dict[str, bytes]:
    """File name -> bytes, for the `--model` the worker loaded; empty for a GGUF model (its
    vocabulary lives in its header, which is not sent) or a directory with no tokenizer."""
    source = resolve_model(model)
    if source.kind == "gguf":
        return {}
    directory = source.directory
    if (directory / HF_TOKENIZER_FILE).is_file():
        names = [HF_TOKENIZER_FILE, *HF_SETTINGS_FILES]
    elif (directory / SENTENCEPIECE_FILE).is_file():
        names = [SENTENCEPIECE_FILE]
    else:
        return {}
    return {name: (directory / name).read_bytes() for name in names if (directory / name).is_file()}
