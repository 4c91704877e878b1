"""The Triton backend equals the torch reference, under Triton's CPU interpreter.

Each trial is one launch over a random mix: decodes with contexts of 1-70 tokens and prefill
chunks of 1-20 tokens after 0-50 cached ones, in a random order (the batch puts decodes
first), with blocks drawn from a shuffled free list and a cache already full of other
sequences' values. Sizes stay small: the interpreter runs each program in numpy.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch

from contract.sampling import SamplingParams
from tests.conftest import REPO_ROOT
from worker.attention import create_attention_backend
from worker.attention.torch_backend import TorchAttentionBackend
from worker.attention.triton_backend import MAX_SPLITS, triton_missing
from worker.step_batch import RequestState, build_step_batch

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

CPU = torch.device("cpu")
GREEDY = SamplingParams(temperature=0.0)


def random_mix(rng: random.Random, block_size: int, num_blocks: int) -> list:
    """(RequestState, tokens this step) for 1-6 sequences over a shuffled block list."""
    free = list(range(num_blocks))
    rng.shuffle(free)
    scheduled = []
    num_decodes, num_chunks = rng.randint(0, 4), rng.randint(0, 3)
    if num_decodes + num_chunks == 0:
        num_chunks = 1
    for i in range(num_decodes + num_chunks):
        if i < num_decodes:
            num_query, context = 1, rng.randint(1, 70)
        else:
            num_query = rng.randint(1, 20)
            context = rng.randint(0, 50) + num_query
        blocks = [free.pop() for _ in range(-(-context // block_size))]
        state = RequestState(f"s{i}", [0] * context, blocks, GREEDY, context - num_query, context)
        scheduled.append((state, num_query))
    rng.shuffle(scheduled)
    return scheduled


def compare_once(
    seed: int, block_size: int, n_heads: int, n_kv_heads: int, head_dim: int
) -> tuple[float, float]:
    """(largest |output difference|, largest |cache difference|) of one random launch."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_blocks = 6 * (-(-70 // block_size)) + 2
    scheduled = random_mix(rng, block_size, num_blocks)
    num_tokens = sum(n for _, n in scheduled)
    shape = (num_blocks, block_size, n_kv_heads, head_dim)
    cache = torch.randn(2, *shape, generator=gen)  # stands for what other steps wrote
    q = torch.randn(num_tokens, n_heads, head_dim, generator=gen)
    # K and V as the model hands them over: strided views into one projection output.
    kv = torch.randn(num_tokens, 2 * n_kv_heads, head_dim, generator=gen)
    k, v = kv[:, :n_kv_heads], kv[:, n_kv_heads:]
    results = []
    triton = create_attention_backend("triton", CPU, block_size)
    for backend in (TorchAttentionBackend(block_size), triton):
        k_cache, v_cache = cache.clone()
        batch = build_step_batch(scheduled, block_size, CPU, backend)
        out = backend.forward(q, k, v, k_cache, v_cache, batch.attn)
        results.append((out, k_cache, v_cache))
    (ref, ref_k, ref_v), (out, out_k, out_v) = results
    cache_diff = max((out_k - ref_k).abs().max().item(), (out_v - ref_v).abs().max().item())
    return (out - ref).abs().max().item(), cache_diff


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize(
    ("n_heads", "n_kv_heads", "head_dim"),
    [(8, 2, 32), (4, 4, 32), (6, 2, 16), (8, 4, 8)],
    ids=["gqa-4", "mha", "gqa-3", "stories260K"],
)
@pytest.mark.slow
def test_triton_kernel_equals_the_reference(block_size, n_heads, n_kv_heads, head_dim) -> None:
    for trial in range(3):
        seed = 1000 * block_size + 10 * n_heads + trial
        out_diff, cache_diff = compare_once(seed, block_size, n_heads, n_kv_heads, head_dim)
        assert out_diff < 1e-5, f"seed {seed}: output differs by {out_diff}"
        assert cache_diff == 0.0, f"seed {seed}: the cache writes differ by {cache_diff}"


def test_float16_inputs_accumulate_in_float32() -> None:
    # (The interpreter cannot multiply bfloat16 matrices; the device check covers bfloat16.)
    rng, gen = random.Random(11), torch.Generator().manual_seed(11)
    block_size, n_heads, n_kv_heads, head_dim = 16, 8, 2, 64
    num_blocks = 6 * 5 + 2
    scheduled = random_mix(rng, block_size, num_blocks)
    num_tokens = sum(n for _, n in scheduled)
    cache = torch.randn(2, num_blocks, block_size, n_kv_heads, head_dim, generator=gen)
    q = torch.randn(num_tokens, n_heads, head_dim, generator=gen)
    kv = torch.randn(num_tokens, 2 * n_kv_heads, head_dim, generator=gen)
    outs = {}
    for dtype, backend in [
        (torch.float32, TorchAttentionBackend(block_size)),
        (torch.float16, create_attention_backend("triton", CPU, block_size)),
    ]:
        k_cache, v_cache = cache.to(dtype)
        x = kv.to(dtype)
        batch = build_step_batch(scheduled, block_size, CPU, backend)
        k, v = x[:, :n_kv_heads], x[:, n_kv_heads:]
        out = backend.forward(q.to(dtype), k, v, k_cache, v_cache, batch.attn)
        assert out.dtype == dtype
        outs[dtype] = out.float()
    reference = outs[torch.float32]
    error = (outs[torch.float16] - reference).abs().max() / reference.abs().max()
    assert error < 2e-3  # float16 inputs and output (11 bits), float32 softmax and sums


def test_auto_picks_triton_for_cuda() -> None:
    # Making the backend touches no GPU: this holds on any host with triton installed.
    assert create_attention_backend("auto", torch.device("cuda"), 16).name == "triton"
    assert create_attention_backend("triton", torch.device("cuda:0"), 32).name == "triton"


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="'triton' runs on CUDA .*TRITON_INTERPRET=1.*not on cpu"):
        create_attention_backend("triton", CPU, 16)
    assert create_attention_backend("auto", CPU, 16).name in ("cpu", "torch")


@pytest.mark.slow
def test_without_triton_auto_falls_back_and_triton_is_refused() -> None:
    code = (
        "import logging, sys, torch\n"
        "sys.modules['triton'] = None  # an import of triton now fails, as where it is absent\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from worker.attention import create_attention_backend\n"
        "print(create_attention_backend('auto', torch.device('cuda'), 16).name)\n"
        "try:\n"
        "    create_attention_backend('triton', torch.device('cuda'), 16)\n"
        "except RuntimeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "torch",
        "refused: attention_backend 'triton' is unavailable: the triton package is not installed",
    ]
    assert "using the slower torch reference on cuda" in result.stderr


@pytest.mark.slow
def test_the_kernels_compile_for_a_hopper_gpu(tmp_path) -> None:
    # Compiles every kernel as a GPU run would, for an H100/H200 (sm_90), with the pinned
    # triton's own ptxas (tests/worker/hopper_compile.py): the interpreter skips the compiler,
    # and so would miss what only it rejects, and register spills.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compile for real, not from an earlier run's cache
    result = subprocess.run(
        [sys.executable, "-m", "tests.worker.hopper_compile"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    built = [json.loads(line) for line in result.stdout.splitlines()]
    kernels = {(row["kernel"], row["dtype"]) for row in built}
    for name in ("paged_attention_kernel", "store_kv_kernel", "add_rms_norm_kernel",
                 "rope_store_kernel", "silu_mul_kernel", "lora_shrink_kernel",
                 "lora_expand_kernel"):  # fmt: skip
        assert {(name, "bfloat16"), (name, "float32")} <= kernels
    splits = {row["NUM_SPLITS"] for row in built if row["kernel"] == "paged_attention_kernel"}
    assert splits == {1, MAX_SPLITS}
    # No variant spills registers (a stack frame is local memory, where spills go), float32
    # prefill tiles included (32 rows at most, 8 warps: worker/attention/triton_backend.py).
    spilled = [row for row in built if row["stack"]]
    assert not spilled, spilled
