"""A Hugging Face directory of stories260K whose tokenizer is a tokenizer.json (its
SentencePiece model converted by transformers), for the tests that need such a model."""

from __future__ import annotations

import json
from pathlib import Path

from tests.worker.checkpoint_writers import export_hf
from tests.worker.driver import read_meta_model


def write_tokenizer_json_model(stories_dir: Path, root: Path) -> Path:
    import transformers

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
