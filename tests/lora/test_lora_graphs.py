"""Decode steps with LoRA adapters replay the captured decode graphs (worker/cuda_graphs.py's
second ladder) where the adapters run on the Triton path. Without a GPU, the capture is the
one thing mocked: a "graph" runs the captured forward again over the same persistent
buffers (tests/worker/test_cuda_graphs.py's ReplayEagerly), so every replay really reads the
per-row adapter slots from the buffer that the step filled; the Triton kernels (attention and
adapters) run under the interpreter, and the choice of the Triton adapter path is forced.
The answers must be the torch path's, run eagerly on the same model and adapters."""

from __future__ import annotations

import pytest

from contract.sampling import SamplingParams
from scheduler.engine import Engine
from tests.lora.adapters import random_prompts
from tests.worker.test_cuda_graphs import ReplayEagerly
from worker.attention.triton_backend import triton_missing
from worker.cuda_graphs import DecodeGraphs

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

PARAMS = SamplingParams(max_tokens=6, temperature=0.0, logprobs=True, ignore_eos=True)


def _engine(adapted, **settings) -> Engine:
    specs = tuple(f"{name}={path}" for name, path in adapted.adapters.items())
    return Engine.from_model_dir(adapted.model_dir, device="cpu", lora=specs, num_kv_blocks=128,
                                 max_num_seqs=4, max_loras=2, **settings)  # fmt: skip


@pytest.mark.slow
def test_adapted_decode_steps_replay_graphs_and_answer_as_the_torch_path(
    random_adapted, monkeypatch
) -> None:
    prompts = random_prompts(6, 1) * 2 + random_prompts(7, 1) * 2
    names = ["all8", None, "qvdown4", "all8"]  # two adapters and the base in one batch
    reference = _engine(random_adapted, attention_backend="torch")
    assert reference.worker.loras.slots is None
    expected = reference.generate(prompts, PARAMS, loras=names)

    monkeypatch.setattr("worker.runner.triton_lora_path", lambda device: True)
    engine = _engine(random_adapted, attention_backend="triton")
    runner = engine.worker
    slots = runner.loras.slots
    assert slots is not None and runner.decode_graphs is None  # the CPU captures nothing
    graphs = DecodeGraphs(runner.model, runner.kv_cache, runner.attention_backend, 4,
                          runner.device, ReplayEagerly, slots)  # fmt: skip
    runner.decode_graphs = graphs
    got = engine.generate(prompts, PARAMS, loras=names)

    for name, want, have in zip(names, expected, got, strict=True):
        assert have.token_ids == want.token_ids, name
        assert have.logprobs == pytest.approx(want.logprobs, abs=1e-5), name
    # After the prefill, every step decoded all four rows from the adapted ladder.
    assert graphs.num_adapted_replays == PARAMS.max_tokens - 1
    assert sum(graphs.num_replays.values()) == graphs.num_adapted_replays
    # The adapters changed the answers: the comparison is not vacuous.
    assert got[0].token_ids != got[1].token_ids and got[2].token_ids != got[3].token_ids


@pytest.mark.slow
def test_base_only_decode_steps_replay_the_ladder_without_adapters(
    random_adapted, monkeypatch
) -> None:
    monkeypatch.setattr("worker.runner.triton_lora_path", lambda device: True)
    engine = _engine(random_adapted, attention_backend="triton")
    runner = engine.worker
    graphs = DecodeGraphs(runner.model, runner.kv_cache, runner.attention_backend, 2,
                          runner.device, ReplayEagerly, runner.loras.slots)  # fmt: skip
    runner.decode_graphs = graphs
    engine.generate(random_prompts(8, 2), PARAMS)
    assert sum(graphs.num_replays.values()) == PARAMS.max_tokens - 1
    assert graphs.num_adapted_replays == 0
