"""A Hugging Face directory whose tokenizer is a tokenizer.json (stories260K's SentencePiece
model converted by transformers) serves the same text as the Meta directory."""

from __future__ import annotations

import json

import pytest

from scheduler import Engine, SamplingParams
from scheduler.tokenizer_hf import HFTokenizer
from tests.worker.checkpoint_writers import export_hf
from tests.worker.driver import read_meta_model

PROMPTS = ["Once upon a time", "Lily and Ben went to the park. They saw a big"]


@pytest.fixture(scope="module")
def hf_dir(stories_dir, tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf")
    sp_dir = root / "sp"
    sp_dir.mkdir()
    (sp_dir / "tokenizer.model").write_bytes((stories_dir / "tokenizer.model").read_bytes())
    model_dir = export_hf(read_meta_model(stories_dir), root / "model")
    transformers.LlamaTokenizer.from_pretrained(str(sp_dir)).save_pretrained(str(model_dir))
    assert not (model_dir / "tokenizer.model").exists()
    # As Llama 2's Hugging Face repositories say it (this conversion leaves it out).
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "add_bos_token": True}))
    return model_dir


def test_tokenizer_json_model_serves_the_meta_models_text(stories_dir, hf_dir) -> None:
    hf = Engine.from_model_dir(hf_dir, num_kv_blocks=64)
    meta = Engine.from_model_dir(stories_dir, num_kv_blocks=64)
    assert isinstance(hf.tokenizer, HFTokenizer) and hf.eos_ids == meta.eos_ids == (2,)
    params = SamplingParams(max_tokens=48, temperature=0)
    for prompt in PROMPTS:
        assert hf.tokenizer.encode(prompt) == meta.tokenizer.encode(prompt)
        [ours], [theirs] = hf.generate(prompt, params), meta.generate(prompt, params)
        assert ours.token_ids == theirs.token_ids and ours.text == theirs.text
        assert ours.text.strip()
