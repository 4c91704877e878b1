"""LoRA adapters batched in one forward pass against the oracle: PEFT applying the same
adapter files to transformers' LlamaForCausalLM (and the merged weights), each request on
its adapter (or none) packed with requests on the others, prompts long enough to be
prefilled in chunks."""

from __future__ import annotations

import pytest

from contract.sampling import SamplingParams
from scheduler.engine import Engine
from tests.lora.adapters import greedy_with_logprobs, peft_model, random_prompts

MAX_TOKENS = 10
# Float32 both sides, summed in other orders: logprobs agree to ~1e-6; the bar is 1e-4.
LOGPROB_TOLERANCE = 1e-4


def _check_against_peft(adapted, prompts, names, **engine_settings) -> None:
    specs = tuple(f"{name}={path}" for name, path in adapted.adapters.items())
    engine = Engine.from_model_dir(
        adapted.model_dir, device="cpu", lora=specs, num_kv_blocks=256, **engine_settings
    )
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True, ignore_eos=True)
    outputs = engine.generate(prompts, params, loras=names)
    references = {}
    for prompt, name, output in zip(prompts, names, outputs, strict=True):
        if name not in references:
            references[name] = peft_model(adapted.model_dir, adapted.adapters.get(name))
        ids, logprobs = greedy_with_logprobs(references[name], prompt, MAX_TOKENS)
        assert output.token_ids == ids, (name, prompt)
        assert output.logprobs == pytest.approx(logprobs, abs=LOGPROB_TOLERANCE), name
    # Each adapter changed what the base model says: the comparison above is not vacuous.
    base = {
        tuple(p): o.token_ids for p, o, n in zip(prompts, outputs, names, strict=True) if n is None
    }
    for prompt, name, output in zip(prompts, names, outputs, strict=True):
        if name is not None and tuple(prompt) in base:
            assert output.token_ids != base[tuple(prompt)], name


@pytest.mark.slow
def test_random_model_adapters_batched_with_each_other_and_the_base(random_adapted):
    prompts = random_prompts(0, 4)
    # Every prompt on every adapter and on none, all in one generate call: one batch.
    names = [None, "all8", "qvdown4", "gateup16"]
    batch = [(p, n) for p in prompts for n in names]
    # Prefill chunks of 8 tokens, so prompts are computed over several steps beside decodes.
    _check_against_peft(
        random_adapted,
        [p for p, _ in batch],
        [n for _, n in batch],
        long_prefill_threshold=8,
        max_num_batched_tokens=64,
        max_num_seqs=16,
        max_loras=3,
    )


@pytest.mark.slow
def test_stories260k_adapters_batched_with_each_other_and_the_base(stories_adapted):
    prompts = random_prompts(1, 3)
    names = [None, "all8", "qvdown4", "gateup16"]
    batch = [(p, n) for p in prompts for n in names]
    _check_against_peft(
        stories_adapted,
        [p for p, _ in batch],
        [n for _, n in batch],
        long_prefill_threshold=16,
        max_num_batched_tokens=48,
        max_num_seqs=16,
        max_loras=3,
    )


@pytest.mark.slow
def test_adapter_matches_peft_merged_weights(random_adapted):
    """The merged-weight form (W + scaling B A in the checkpoint) as a second oracle."""
    merged = peft_model(random_adapted.model_dir, random_adapted.adapters["all8"])
    merged = merged.merge_and_unload()
    prompt = random_prompts(2, 1)[0]
    engine = Engine.from_model_dir(
        random_adapted.model_dir,
        device="cpu",
        lora=(f"all8={random_adapted.adapters['all8']}",),
        num_kv_blocks=64,
    )
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True, ignore_eos=True)
    [output] = engine.generate([prompt], params, loras="all8")
    ids, logprobs = greedy_with_logprobs(merged, prompt, MAX_TOKENS)
    assert output.token_ids == ids
    assert output.logprobs == pytest.approx(logprobs, abs=LOGPROB_TOLERANCE)


@pytest.mark.slow
def test_more_adapters_than_max_loras_take_turns_and_stay_exact(random_adapted):
    """Three adapters, max_loras 1: they run one adapter at a time (with base requests
    beside), the worker evicting and reloading, and each still matches PEFT."""
    prompts = random_prompts(3, 2)
    names = ["all8", "qvdown4", None, "gateup16", "all8"]
    batch = [(p, n) for p in prompts for n in names]
    _check_against_peft(random_adapted, [p for p, _ in batch], [n for _, n in batch], max_loras=1)


@pytest.mark.slow
def test_the_triton_slot_path_matches_peft(random_adapted, monkeypatch):
    """The adapters through the Triton kernels in slots (the CUDA path, here under Triton's
    interpreter: only the choice of path is forced), three adapters over max_loras 2, so
    slots are freed and taken again, beside base requests, prompts prefilled in chunks."""
    from worker import lora_triton

    monkeypatch.setattr("worker.runner.triton_lora_path", lambda device: True)
    launches = []
    launch = lora_triton.lora_add
    monkeypatch.setattr(lora_triton, "lora_add", lambda *a: launches.append(1) or launch(*a))
    prompts = random_prompts(4, 1)  # each launch runs in numpy: few requests
    names = ["all8", "qvdown4", None, "gateup16"]
    batch = [(p, n) for p in prompts for n in names]
    _check_against_peft(random_adapted, [p for p, _ in batch], [n for _, n in batch],
                        max_loras=2, long_prefill_threshold=8, max_num_batched_tokens=32,
                        max_num_seqs=8)  # fmt: skip
    assert launches
