"""A Hugging Face directory whose tokenizer is a tokenizer.json (stories260K's SentencePiece
model converted by transformers) serves the same text as the Meta directory."""

from __future__ import annotations

import pytest

from modelfiles.tokenizer_hf import HFTokenizer
from scheduler import Engine, SamplingParams
from tests.models.tokenizer_json_model import write_tokenizer_json_model

PROMPTS = ["Once upon a time", "Lily and Ben went to the park. They saw a big"]


@pytest.fixture(scope="module")
def hf_dir(stories_dir, tmp_path_factory):
    pytest.importorskip("transformers")
    return write_tokenizer_json_model(stories_dir, tmp_path_factory.mktemp("hf"))


@pytest.mark.slow
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
