"""Warm-up at start launches every Triton kernel variant a step can (worker/kernel_warmup.py):
a random workload of chunked prefills and decode batches, split and unsplit, launches nothing
that warm-up did not launch first, so on a GPU no request waits for a compile.

A variant is what Triton compiles once: the kernel, its compile-time constants and launch
options, and how it specialises each other argument (its type; an integer's being 1 or a
multiple of 16; a pointer's 16-byte alignment), worked out by Triton's own function for it.
The interpreter compiles nothing, so the launches are recorded on the way in.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from contract.sampling import SamplingParams
from tests.worker.driver import Driver, start_worker
from worker.attention.triton_backend import triton_missing
from worker.kernel_warmup import warm_up_kernels
from worker.random_model import random_weights, write_meta_model

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

GREEDY = SamplingParams(temperature=0.0)


def variant(kernel, args: tuple, kwargs: dict) -> tuple:
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    unspecialised = set(kernel.kwargs.get("do_not_specialize") or ())
    arguments = tuple(
        native_specialize_impl(BaseBackend, value, False, name not in unspecialised, True)
        for name, value in zip(kernel.arg_names, args, strict=False)
    )
    return kernel.fn.__name__, arguments, tuple(sorted(kwargs.items()))


@pytest.fixture
def launches(monkeypatch):
    from triton.runtime.interpreter import InterpretedFunction

    seen: set[tuple] = set()
    launch = InterpretedFunction.run

    def recorded(kernel, *args, grid, warmup, **kwargs):
        seen.add(variant(kernel, args, kwargs))
        return launch(kernel, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recorded)
    return seen


def long_context_model(out_dir: Path) -> Path:
    """A tiny random-weight Llama (GQA 4/2) whose contexts reach 1,024 tokens: past 512 a
    decode step splits in two (segments of at least 256 keys)."""
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256,
              "multiple_of": 16, "ffn_dim_multiplier": None, "norm_eps": 1e-5,
              "max_seq_len": 1024, "rope_theta": 10000.0}  # fmt: skip
    write_meta_model(out_dir, params, random_weights(params, 0))
    return out_dir


@pytest.mark.slow
def test_a_workload_launches_no_variant_that_warm_up_did_not(tmp_path, launches) -> None:
    worker = start_worker(long_context_model(tmp_path), device="cpu", attention_backend="triton")
    backend = worker.attention_backend
    backend.num_sms = 132  # as on an H100: decode steps of long contexts split
    assert backend.reachable_splits(2, 1024) == [1, 2, 4]
    runs = warm_up_kernels(worker.model, worker.kv_cache, backend)
    warmed = set(launches)
    names = {name for name, _, _ in warmed}
    assert names == {"add_rms_norm_kernel", "rope_store_kernel", "paged_attention_kernel",
                     "silu_mul_kernel"}  # fmt: skip
    assert runs == 4  # float32 prefill tiles of 32 rows (16 are the decodes'); 3 split counts
    assert not worker.kv_cache.storage.any()  # warm-up wrote nowhere in the cache
    launches.clear()

    rng = random.Random(4)
    driver = Driver(worker, rng)
    # (prompt tokens after the BOS, prefill chunk, new tokens): mixed steps of chunks of every
    # tile shape beside decodes first, then decode-only steps past 512 tokens of context.
    requests = {"long": (700, 128, 8), "mid": (40, 16, 3), "short": (5, 1, 2), "one": (1, 16, 2)}
    for req_id, (length, _, new_tokens) in requests.items():
        driver.add(req_id, [1, *rng.choices(range(3, 256), k=length)], GREEDY, new_tokens)
    driver.run(chunk_of=lambda seq: requests[seq.req_id][1])
    # Decode steps split in 2 (the long context, past 512) and ran unsplit (the others).
    splits = {dict(kwargs)["NUM_SPLITS"] for name, _, kwargs in launches
              if name == "paged_attention_kernel"}  # fmt: skip
    assert splits == {1, 2}
    assert launches <= warmed, sorted(launches - warmed)


@pytest.mark.slow
def test_adapter_steps_of_any_size_launch_no_variant_that_warm_up_did_not(
    tmp_path, launches
) -> None:
    """With LoRA slots (the Triton adapter path) warm-up launches the shrink and expand
    kernels of every projection; steps of any row count, any mix of slots, launch nothing
    else (the row count picks a tile of 16 or 64 rows, and is not specialised on)."""
    import torch

    from modelfiles.lora_files import BaseShapes
    from worker.lora_slots import LoraSlots
    from worker.lora_triton import TritonLoraStep

    worker = start_worker(long_context_model(tmp_path), device="cpu", attention_backend="triton")
    args = worker.model.args
    slots = LoraSlots(2, 16, BaseShapes.of(args), torch.float32, torch.device("cpu"), True)
    warm_up_kernels(worker.model, worker.kv_cache, worker.attention_backend, slots)
    warmed = {launch for launch in launches if launch[0].startswith("lora_")}
    assert {name for name, _, _ in warmed} == {"lora_shrink_kernel", "lora_expand_kernel"}
    launches.clear()
    gen = torch.Generator().manual_seed(0)
    for num_tokens in (1, 3, 16, 17, 32, 45, 64, 100):
        step = TritonLoraStep(slots, torch.randint(-1, 2, (num_tokens,), generator=gen))
        for name, projection in slots.layers[0].items():
            x = torch.randn(num_tokens, projection.a.shape[-1], generator=gen)
            step.add(torch.zeros(num_tokens, projection.b.shape[1]), x, 0, name)
    assert {name for name, _, _ in launches} == {"lora_shrink_kernel", "lora_expand_kernel"}
    assert launches <= warmed, sorted(launches - warmed)
