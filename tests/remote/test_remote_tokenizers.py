"""A remote worker hands the scheduler its model's tokenizer files: tokenizer.json models serve
remotely the text they serve in-process, and a worker with no tokenizer to send is refused
with a line saying so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend.remote_engine import remote_engine
from modelfiles.remote_tokenizer import tokenizer_from_files
from modelfiles.tokenizer_files import tokenizer_files
from modelfiles.tokenizer_hf import HFTokenizer
from modelfiles.tokenizer_sp import SentencePieceTokenizer
from scheduler import Engine, EngineConfig, SamplingParams
from tests.models.gguf_writer import write_stories_gguf
from tests.models.tokenizer_json_model import write_tokenizer_json_model
from tests.remote.conftest import start_worker
from tests.server.serve_process import ServeProcess
from tests.worker.driver import read_meta_model

PROMPTS = ["Once upon a time", "Lily and Ben went to the park. They saw a big"]


@pytest.fixture(scope="module")
def hf_dir(stories_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return write_tokenizer_json_model(stories_dir, tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="module")
def hf_worker(hf_dir: Path) -> Iterator[ServeProcess]:
    process = start_worker("--model", str(hf_dir), "--num-kv-blocks", "64")
    yield process
    process.stop()


def test_a_tokenizer_json_model_serves_remotely_the_text_it_serves_in_process(
    hf_dir: Path, hf_worker: ServeProcess
) -> None:
    remote = remote_engine(EngineConfig(), hf_worker.target, 30.0, 60.0)
    try:
        embedded = Engine.from_model_dir(hf_dir, num_kv_blocks=64)
        assert isinstance(remote.tokenizer, HFTokenizer)
        assert remote.eos_ids == embedded.eos_ids
        params = SamplingParams(max_tokens=32, temperature=0)
        for prompt in PROMPTS:
            [ours], [theirs] = remote.generate(prompt, params), embedded.generate(prompt, params)
            assert ours.text == theirs.text and ours.text.strip()
            assert ours.prompt_token_ids == theirs.prompt_token_ids
    finally:
        remote.close()


def test_the_files_sent_are_the_ones_the_engine_reads(
    hf_dir: Path, stories_dir: Path, tmp_path: Path
) -> None:
    hf = tokenizer_files(hf_dir)
    assert "tokenizer.json" in hf and "tokenizer_config.json" in hf and "config.json" in hf
    assert "model.safetensors" not in hf and "tokenizer.model" not in hf
    assert set(tokenizer_files(stories_dir)) == {"tokenizer.model"}
    sp = tokenizer_from_files(tokenizer_files(stories_dir), "w:1")
    assert isinstance(sp, SentencePieceTokenizer)
    # A GGUF's vocabulary is in its header: nothing to send, even with tokenizer files beside.
    gguf = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "stories.gguf")
    (tmp_path / "tokenizer.model").write_bytes((stories_dir / "tokenizer.model").read_bytes())
    assert tokenizer_files(gguf) == {} and tokenizer_files(tmp_path) == {}


def test_a_worker_with_no_tokenizer_or_odd_files_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="sends no tokenizer .*GGUF file's vocabulary"):
        tokenizer_from_files({}, "w:1")
    with pytest.raises(ValueError, match=r"unexpected tokenizer files \['../x'\]"):
        tokenizer_from_files({"../x": b"", "tokenizer.json": b"{}"}, "w:1")
    with pytest.raises(ValueError, match="unreadable"):
        tokenizer_from_files({"tokenizer.json": b"not json"}, "w:1")
