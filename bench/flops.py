"""Matmul FLOPs of a workload, and this machine's measured float32 GEMM rate: together they
give the compute floor, the least time any engine could take for the work."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(slots=True, frozen=True)
class ModelShape:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    hidden_dim: int
    vocab_size: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_meta_dir(cls, model_dir: Path) -> ModelShape:
        params = json.loads((model_dir / "params.json").read_text())
        dim, multiple_of = int(params["dim"]), int(params.get("multiple_of", 256))
        # Meta's FeedForward width rule.
        hidden = int(2 * (4 * dim) / 3)
        if params.get("ffn_dim_multiplier"):
            hidden = int(params["ffn_dim_multiplier"] * hidden)
        hidden = multiple_of * ((hidden + multiple_of - 1) // multiple_of)
        return cls(
            dim=dim,
            n_layers=int(params["n_layers"]),
            n_heads=int(params["n_heads"]),
            n_kv_heads=int(params.get("n_kv_heads") or params["n_heads"]),
            hidden_dim=hidden,
            vocab_size=int(params["vocab_size"]),
        )

    def linear_flops_per_token(self) -> int:
        """Projections and MLP of every layer, for one token (2 FLOPs per multiply-add)."""
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        per_layer = (
            self.dim * (q_dim + 2 * kv_dim) + q_dim * self.dim + 3 * self.dim * self.hidden_dim
        )
        return 2 * self.n_layers * per_layer

    def attention_flops(self, num_context: int) -> int:
        """Q.K and P.V of one token that sees `num_context` keys, over every layer."""
        return 2 * 2 * self.n_layers * self.n_heads * self.head_dim * num_context

    def request_flops(self, prompt_len: int, output_len: int) -> int:
        """Every token but the last output goes through the layers once (its K/V computed
        once, seeing the tokens before it); each output token costs one LM-head row."""
        num_forward = prompt_len + output_len - 1
        sum_context = num_forward * (num_forward + 1) // 2
        return (
            num_forward * self.linear_flops_per_token()
            + self.attention_flops(1) * sum_context
            + output_len * 2 * self.dim * self.vocab_size
        )


def workload_flops(shape: ModelShape, prompt_lens: list[int], output_lens: list[int]) -> int:
    return sum(shape.request_flops(p, n) for p, n in zip(prompt_lens, output_lens, strict=True))


def static_batch_flops(
    shape: ModelShape, prompt_lens: list[int], output_lens: list[int], batch_size: int
) -> int:
    """The matmul work static batches do: every row padded to its batch's longest prompt and
    run for its batch's longest output."""
    total = 0
    for first in range(0, len(prompt_lens), batch_size):
        rows = slice(first, first + batch_size)
        num_rows = len(prompt_lens[rows])
        total += num_rows * shape.request_flops(max(prompt_lens[rows]), max(output_lens[rows]))
    return total


def measure_gemm_flops(device: str = "cpu", seconds: float = 1.0) -> tuple[float, str]:
    """Best float32 GEMM rate (FLOP/s) over a few shapes, and the shape that reached it.
    The best, not a typical, rate: it makes the floor as hard to reach as possible."""
    shapes = [(2048, 2048, 2048), (2048, 512, 1376), (4096, 512, 512), (1024, 1376, 512)]
    best, best_shape = 0.0, ""
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        torch.mm(a, b)  # warm-up
        num_runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            num_runs += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = 2 * m * k * n * num_runs / (time.perf_counter() - start)
        if rate > best:
            best, best_shape = rate, f"[{m}x{k}] @ [{k}x{n}]"
    return best, best_shape
