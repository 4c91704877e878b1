"""A model's recommended sampling (generation_config.json) is what a request that leaves a field
unset gets, over gRPC and HTTP, as vLLM takes it; a field the request sets wins; GetModelInfo
and /v1/models say what the defaults are."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

from client import Client
from modelfiles.tokenizer_hf import sampling_defaults
from scheduler import Engine
from tests.server.conftest import NUM_KV_BLOCKS
from tests.worker.checkpoint_writers import export_hf
from tests.worker.driver import read_meta_model

PROMPT = "Once upon a time"
# top_k 1 makes every draw the likeliest token: a request that took these defaults decodes
# greedily, one that did not draws at temperature 1.
RECOMMENDED = {"do_sample": True, "temperature": 1.25, "top_k": 1, "top_p": 0.9}


@pytest.fixture(scope="module")
def recommending_model(stories_dir, tmp_path_factory):
    model_dir = export_hf(read_meta_model(stories_dir), tmp_path_factory.mktemp("m") / "hf")
    shutil.copy(stories_dir / "tokenizer.model", model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps(RECOMMENDED))
    return model_dir


@pytest.fixture
def defaults_server(start_server, recommending_model):
    engine = Engine.from_model_dir(recommending_model, num_kv_blocks=NUM_KV_BLOCKS)
    return start_server(engine, http_port=0)


def test_generation_config_keys_become_sampling_fields() -> None:
    found = sampling_defaults({**RECOMMENDED, "max_new_tokens": 5, "min_p": "high"})
    assert found == {"temperature": 1.25, "top_k": 1, "top_p": 0.9}
    # transformers decodes greedily when do_sample is false, whatever temperature it names.
    assert sampling_defaults({"do_sample": False, "temperature": 0.6}) == {"temperature": 0.0}
    assert sampling_defaults({}) == {}


def test_unset_fields_take_the_models_defaults_and_set_ones_win(defaults_server) -> None:
    with Client(defaults_server.target, timeout=30) as client:
        info = client.model_info()
        assert info.default_sampling.top_k == 1
        assert info.default_sampling.temperature == pytest.approx(1.25)
        assert not info.default_sampling.HasField("repetition_penalty")
        common = {"max_tokens": 24, "ignore_eos": True, "seed": 7}
        greedy = client.generate(PROMPT, temperature=0, **common).token_ids
        defaulted = client.generate(PROMPT, **common).token_ids
        assert defaulted == greedy  # top_k 1 from the model
        drawn = client.generate(PROMPT, top_k=0, top_p=1.0, temperature=1.25, **common).token_ids
        assert drawn != greedy  # the request's own fields win
    base_url = defaults_server.base_url
    with urllib.request.urlopen(f"{base_url}/models", timeout=30) as response:
        [card] = json.loads(response.read())["data"]
    assert card["default_sampling"] == {"temperature": 1.25, "top_k": 1, "top_p": 0.9}
    body = {"prompt": PROMPT, "max_tokens": 24, "ignore_eos": True, "seed": 7}
    request = urllib.request.Request(
        f"{base_url}/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        text = json.loads(response.read())["choices"][0]["text"]
    with Client(defaults_server.target, timeout=30) as client:
        assert text == client.generate(PROMPT, temperature=0, max_tokens=24, ignore_eos=True).text


def test_a_model_without_recommendations_reports_none(server) -> None:
    with Client(server.target, timeout=30) as client:
        assert client.model_info().default_sampling.ListFields() == []
