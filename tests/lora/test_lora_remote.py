"""Adapters over worker.proto: an engine driving `python -m worker serve` gives what the engine
with the worker in-process gives, requests on two adapters and the base model in one batch;
the worker reads each adapter from the path the step names."""

from __future__ import annotations

import dataclasses

import pytest

from frontend.remote_engine import remote_engine
from scheduler import Engine, EngineConfig, SamplingParams
from tests.remote.conftest import start_worker


@pytest.mark.server
def test_remote_worker_serves_adapters_as_the_embedded_one(random_adapted):
    specs = tuple(f"{name}={path}" for name, path in random_adapted.adapters.items())
    worker = start_worker(
        "--model", str(random_adapted.model_dir), "--num-kv-blocks", "64", "--max-loras", "2"
    )
    try:
        config = EngineConfig.from_kwargs(lora=specs)
        remote = remote_engine(config, worker.target, 30.0, 60.0)
        try:
            assert remote.info.max_loras == 2
            embedded = Engine.from_model_dir(
                random_adapted.model_dir, device="cpu", num_kv_blocks=64, lora=specs, max_loras=2
            )
            prompts = [[1, 7, 8, 9, 10], [1, 30, 31], [1, 7, 8, 9, 10], [1, 50]]
            names = ["all8", None, "qvdown4", "gateup16"]
            params = SamplingParams(max_tokens=6, temperature=0.0, logprobs=True, ignore_eos=True)
            got = remote.generate(prompts, params, loras=names)
            want = embedded.generate(prompts, params, loras=names)
            for a, b in zip(got, want, strict=True):
                assert dataclasses.replace(a, req_id="") == dataclasses.replace(b, req_id="")
            assert got[0].token_ids != got[2].token_ids  # the adapters made a difference
        finally:
            remote.close()
    finally:
        worker.stop()
