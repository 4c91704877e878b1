"""The attention backends agree with the torch reference, and `auto` picks the fast one.

Each trial runs the same randomised schedule through two backends, each with its own cache
in its own layout: 1-12 sequences, prefill chunks of 1-64 tokens after whatever is cached,
decodes interleaved, a random subset of sequences per step in a random order, blocks taken
from a shuffled free list. Every step's attention output must agree.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from contract.sampling import SamplingParams
from tests.conftest import REPO_ROOT
from worker.attention import create_attention_backend
from worker.attention.cpu_backend import CpuAttentionBackend
from worker.attention.torch_backend import TorchAttentionBackend
from worker.cpu_kernels import load_cpu_kernels
from worker.step_batch import RequestState, build_step_batch

CPU = torch.device("cpu")
GREEDY = SamplingParams(temperature=0.0)


def make_cache(backend, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype):
    k_shape, v_shape = backend.kv_cache_shapes(num_blocks, block_size, kv_heads, head_dim)
    return torch.zeros(k_shape, dtype=dtype), torch.zeros(v_shape, dtype=dtype)


def run_schedule(
    backends: list,
    *,
    seed: int,
    block_size: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Largest |difference| between backends[1:] and backends[0] over every step."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_seqs = rng.randint(1, 12)
    lengths = [rng.randint(1, 200) for _ in range(num_seqs)]
    num_blocks = sum(-(-n // block_size) for n in lengths) + 4
    free = list(range(num_blocks))
    rng.shuffle(free)
    caches = [make_cache(b, num_blocks, block_size, n_kv_heads, head_dim, dtype) for b in backends]
    states = [RequestState(f"s{i}", [0] * n, [], GREEDY, 0, n) for i, n in enumerate(lengths)]
    worst = 0.0
    while any(s.num_computed < len(s.token_ids) for s in states):
        live = [s for s in states if s.num_computed < len(s.token_ids)]
        scheduled = []
        for state in rng.sample(live, rng.randint(1, len(live))):
            left = len(state.token_ids) - state.num_computed
            # A decode is one token after everything else; chunks are 1-64 tokens.
            num = 1 if rng.random() < 0.3 else min(left, rng.randint(1, 64))
            while len(state.block_ids) * block_size < state.num_computed + num:
                state.block_ids.append(free.pop())
            scheduled.append((state, num))
        num_tokens = sum(n for _, n in scheduled)
        q = torch.randn(num_tokens, n_heads, head_dim, generator=gen).to(dtype)
        kv = torch.randn(num_tokens, 2 * n_kv_heads, head_dim, generator=gen).to(dtype)
        k, v = kv[:, :n_kv_heads], kv[:, n_kv_heads:]  # strided rows, as the model's views
        outs = []
        for backend, (k_cache, v_cache) in zip(backends, caches, strict=True):
            batch = build_step_batch(scheduled, block_size, CPU, backend)
            # The batch puts decodes first: compare rows in that order, whatever each backend.
            outs.append(backend.forward(q, k, v, k_cache, v_cache, batch.attn).float())
        for out in outs[1:]:
            worst = max(worst, (out - outs[0]).abs().max().item())
        for state, num in scheduled:
            state.num_computed += num
    return worst


needs_kernel = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler here")


@needs_kernel
@pytest.mark.parametrize("block_size", [1, 16, 32])
@pytest.mark.parametrize(
    ("n_heads", "n_kv_heads", "head_dim"),
    [(8, 2, 64), (4, 4, 64), (4, 1, 128), (2, 2, 128)],
    ids=["gqa-64", "mha-64", "gqa-128", "mha-128"],
)
@pytest.mark.slow
def test_cpu_kernel_equals_the_reference(block_size, n_heads, n_kv_heads, head_dim) -> None:
    backends = [TorchAttentionBackend(block_size), CpuAttentionBackend(block_size)]
    for seed in (block_size, block_size + 1000):
        worst = run_schedule(
            backends,
            seed=seed + n_heads * 7 + head_dim,
            block_size=block_size,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=head_dim,
        )
        assert worst < 1e-5, f"seed {seed}: differs by {worst}"


@needs_kernel
def test_cpu_kernel_in_bfloat16_stays_near_the_reference() -> None:
    backends = [TorchAttentionBackend(16), CpuAttentionBackend(16)]
    worst = run_schedule(
        backends, seed=5, block_size=16, n_heads=8, n_kv_heads=2, head_dim=64, dtype=torch.bfloat16
    )
    assert worst < 0.03  # both round their output to bfloat16 (8 bits of mantissa)


@needs_kernel
def test_one_long_sequence_splits_its_context_across_threads() -> None:
    # One sequence and one KV head make a single work item: with two threads the kernel
    # splits the context into parts and merges them, which must change nothing.
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(3)
        fill_q, fill_kv = torch.randn(1499, 4, 64, generator=gen), torch.randn(1499, 2, 64)
        q, kv = torch.randn(1, 4, 64, generator=gen), torch.randn(1, 2, 64, generator=gen)
        outs = []
        for backend in (TorchAttentionBackend(16), CpuAttentionBackend(16)):
            k_cache, v_cache = make_cache(backend, 94, 16, 1, 64, torch.float32)
            prefill = RequestState("long", [0] * 1500, list(range(94)), GREEDY, 0, 1500)
            batch = build_step_batch([(prefill, 1499)], 16, CPU, backend)
            backend.forward(fill_q, fill_kv[:, :1], fill_kv[:, 1:], k_cache, v_cache, batch.attn)
            decode = RequestState("long", [0] * 1500, list(range(94)), GREEDY, 1499, 1500)
            batch = build_step_batch([(decode, 1)], 16, CPU, backend)
            outs.append(backend.forward(q, kv[:, :1], kv[:, 1:], k_cache, v_cache, batch.attn))
        assert (outs[1] - outs[0]).abs().max().item() < 1e-5
    finally:
        torch.set_num_threads(before)


@needs_kernel
def test_auto_picks_the_cpu_kernel_on_the_cpu() -> None:
    assert create_attention_backend("auto", CPU, 16).name == "cpu"
    assert create_attention_backend("torch", CPU, 16).name == "torch"


@pytest.mark.slow
def test_without_a_compiler_auto_falls_back_to_the_reference(tmp_path) -> None:
    # A fresh build directory and a compiler that does not exist: the build fails for real.
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    code = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from worker.attention import create_attention_backend\n"
        "print(create_attention_backend('auto', torch.device('cpu'), 16).name)\n"
        "try:\n"
        "    create_attention_backend('cpu', torch.device('cpu'), 16)\n"
        "except RuntimeError as exc:\n"
        "    print('refused:', exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "torch",
        "refused: attention_backend 'cpu' needs its C++ kernel, which did not build",
    ]
    assert "cannot build the CPU kernels" in result.stderr
    assert "using the slower torch reference" in result.stderr


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="attention_backend must be one of auto, torch, cpu"):
        create_attention_backend("flash", CPU, 16)


@pytest.mark.slow
def test_a_build_killed_half_way_does_not_block_the_next(tmp_path) -> None:
    # A build that died leaves torch's lock file in the build directory; the next process
    # must build anyway instead of waiting for that lock forever.
    code = (
        "from pathlib import Path\n"
        "from torch.utils import cpp_extension\n"
        "from worker import cpu_kernels\n"
        "name = f'loom_cpu_kernels_{cpu_kernels._build_key()}'\n"
        "d = Path(cpp_extension._get_build_directory(name, verbose=False))\n"
        "(d / 'lock').touch()\n"
        "print(cpu_kernels.load_cpu_kernels())\n"
    )
    env = dict(os.environ, TORCH_EXTENSIONS_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
