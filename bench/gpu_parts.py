"""The device check's parts (bench/gpu_check.py runs them): the Triton kernel against the torch
reference, the bundled model's greedy text through each path, and a random-weight Llama drawn
where it runs, timed step by step and over a workload, beside transformers' `generate`.

Kernel trials: each is one launch over a random mix of decodes and prefill chunks after cached
prefixes, blocks drawn from a shuffled free list and a cache full of other values. The
reference runs in float32 on the same inputs rounded to the kernel's dtype, so the error is the
kernel's own; the torch reference run in that dtype is reported beside it, for scale.
"""

from __future__ import annotations

import gc
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import (
    GREEDY,
    RecordingWorker,
    Workload,
    greedy_params,
    random_tokens,
    run_workload,
    timed,
)
from modelfiles.lora_files import BaseShapes
from modelfiles.tokenizer import Tokenizer
from scheduler import Engine
from scheduler.config import EngineConfig
from worker.attention import create_attention_backend
from worker.attention.torch_backend import TorchAttentionBackend
from worker.config import BUNDLED_MODEL
from worker.loader import LoadedCheckpoint
from worker.model_args import args_from_meta_params
from worker.random_model import random_lora_adapter, random_weights
from worker.runner import ModelRunner
from worker.step_batch import RequestState, build_step_batch

PLANTS = ("nan", "wrong-kernel")  # faults the check's own test plants in the kernel part

# ---- the kernel against the reference ----------------------------------------------------


@dataclass(slots=True, frozen=True)
class MixSizes:
    max_seqs: int
    max_context: int
    max_chunk: int
    heads: tuple[tuple[int, int, int], ...]  # (query heads, KV heads, head_dim): GQA, MHA


# On a GPU: up to 24 sequences, contexts to 2,048, chunks to 512. In the CPU interpreter, a
# few short ones (it runs each program in numpy).
GPU_SIZES = MixSizes(24, 2048, 512, ((32, 8, 128), (32, 32, 128)))
CPU_SIZES = MixSizes(5, 70, 20, ((8, 2, 32), (4, 4, 32)))


class PlantedBackend:
    """The Triton backend with a fault planted in its output: a NaN, or every token given its
    neighbour's attention (an indexing bug)."""

    def __init__(self, inner: Any, plant: str) -> None:
        self.inner, self.plant, self.name = inner, plant, inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def forward(self, *args: Any) -> torch.Tensor:
        out = self.inner.forward(*args)
        if self.plant == "nan":
            out = out.clone()
            out.view(-1)[0] = float("nan")
            return out
        return out.roll(1, dims=0)


def random_mix(rng: random.Random, sizes: MixSizes, block_size: int, decodes_only: bool):
    """(the step's sequences with their query lengths, blocks the cache needs)."""
    seqs = []
    for i in range(rng.randint(1, sizes.max_seqs)):
        if decodes_only or rng.random() < 0.5:
            num_query, context = 1, rng.randint(1, sizes.max_context)
        else:
            num_query = rng.randint(1, sizes.max_chunk)
            context = num_query + rng.randint(0, sizes.max_context - num_query)
        seqs.append((i, num_query, context))
    num_blocks = sum(-(-context // block_size) for _, _, context in seqs) + 8
    free = list(range(num_blocks))
    rng.shuffle(free)
    scheduled = []
    for i, num_query, context in seqs:
        blocks = [free.pop() for _ in range(-(-context // block_size))]
        state = RequestState(f"s{i}", [0] * context, blocks, GREEDY,
                             context - num_query, context)  # fmt: skip
        scheduled.append((state, num_query))
    return scheduled, num_blocks


def _attend(backend, scheduled, block_size, device, q, kv, n_kv_heads, caches):
    k_cache, v_cache = (c.clone() for c in caches)
    batch = build_step_batch(scheduled, block_size, device, backend)
    # K and V are strided views of one tensor, as the model's fused projection gives them.
    out = backend.forward(q, kv[:, :n_kv_heads], kv[:, n_kv_heads:], k_cache, v_cache, batch.attn)
    return out.float(), k_cache, v_cache


def relative_error(out: torch.Tensor, ref: torch.Tensor, scale: float) -> float:
    """max |out - ref| / scale; NaN when `out` holds anything not finite, so it can pass no
    goal and is the worst error of all."""
    if not bool(torch.isfinite(out).all()):
        return math.nan
    return (out - ref).abs().max().item() / scale


def worst(a: float, b: float) -> float:
    """The larger error, NaN counting as the largest (max(0.0, nan) is 0.0)."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def one_trial(seed: int, device: torch.device, dtype: torch.dtype, sizes: MixSizes,
              block_size: int, heads: tuple[int, int, int], plant: str | None,
              num_splits: int | None = None, decodes_only: bool | None = None) -> dict:  # fmt: skip
    """One launch against the reference. `num_splits`: split-KV forced this many ways (0: as
    the backend's policy chooses on this device), and the launch repeated on the same inputs,
    which must give the same bits (a result that moves is a race)."""
    rng = random.Random(seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    n_heads, n_kv_heads, head_dim = heads
    if decodes_only is None:
        decodes_only = seed % 4 == 0
    scheduled, num_blocks = random_mix(rng, sizes, block_size, decodes_only)
    num_tokens = sum(n for _, n in scheduled)

    def randn(*shape: int) -> torch.Tensor:  # rounded to dtype, held in float32
        return torch.randn(shape, generator=gen, device=device).to(dtype).float()

    caches = randn(2, num_blocks, block_size, n_kv_heads, head_dim)
    q, kv = randn(num_tokens, n_heads, head_dim), randn(num_tokens, 2 * n_kv_heads, head_dim)
    reference = TorchAttentionBackend(block_size)
    ref, ref_k, ref_v = _attend(reference, scheduled, block_size, device, q, kv, n_kv_heads,
                                caches)  # fmt: skip
    low = (q.to(dtype), kv.to(dtype), n_kv_heads, caches.to(dtype))
    triton = create_attention_backend("triton", device, block_size)
    if num_splits:
        triton.num_splits = num_splits
    if plant:
        triton = PlantedBackend(triton, plant)
    out, out_k, out_v = _attend(triton, scheduled, block_size, device, *low)
    torch_low, _, _ = _attend(reference, scheduled, block_size, device, *low)
    scale = ref.abs().max().item()
    found = {
        "rel_err": relative_error(out, ref, scale),
        "torch_rel_err": relative_error(torch_low, ref, scale),
        "cache_equal": torch.equal(out_k.float(), ref_k) and torch.equal(out_v.float(), ref_v),
        "num_tokens": num_tokens,
    }
    if num_splits is not None:
        batch = build_step_batch(scheduled, block_size, device, triton)
        found["splits"] = triton.splits_for(batch.attn, n_kv_heads)
        found["repeat_equal"] = torch.equal(out, _attend(triton, scheduled, block_size, device,
                                                         *low)[0])  # fmt: skip
    return found


def kernel_check(device: torch.device, dtypes: Sequence[torch.dtype], trials: int,
                 plant: str | None = None) -> dict:  # fmt: skip
    """Worst errors per dtype over trials x block sizes 16, 32 x GQA and MHA."""
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    results = {}
    for dtype in dtypes:
        started = time.monotonic()
        found = {"rel_err": 0.0, "torch_rel_err": 0.0, "cache_equal": True, "launches": 0,
                 "tokens": 0}  # fmt: skip
        for block_size in (16, 32):
            for heads in sizes.heads:
                for trial in range(trials):
                    seed = 1000 * block_size + 100 * heads[1] + trial
                    one = one_trial(seed, device, dtype, sizes, block_size, heads, plant)
                    for key in ("rel_err", "torch_rel_err"):
                        found[key] = worst(found[key], one[key])
                    found["cache_equal"] = found["cache_equal"] and one["cache_equal"]
                    found["launches"] += 1
                    found["tokens"] += one["num_tokens"]
        found["seconds"] = round(time.monotonic() - started, 1)
        results[str(dtype).removeprefix("torch.")] = found
    return results


# Split-KV: mixes with contexts to 8,192 (on the CPU, 600), split 2, 4 or 16 ways or as the
# policy chooses (0) on this GPU. A GPU runs decode-only steps (the only ones the policy splits:
# each mixed shape forced to split would be one more compile) on 8 and 32 KV heads, and with
# `more_heads` on 1 and 2 too; the CPU, with no compiles to pay, mixed steps as well.
SPLIT_GPU_SIZES = MixSizes(4, 8192, 16, ((32, 8, 128), (32, 32, 128)))
SPLIT_GPU_MORE_HEADS = ((8, 1, 128), (16, 2, 128))
SPLIT_CPU_SIZES = MixSizes(3, 600, 8, ((4, 1, 32), (8, 2, 32)))
SPLIT_COUNTS = (0, 2, 4, 16)


def split_kv_check(device: torch.device, dtypes: Sequence[torch.dtype], trials: int,
                   more_heads: bool = False, plant: str | None = None) -> dict:  # fmt: skip
    """Per dtype: worst error against the reference over the split trials, whether every
    launch repeated bit for bit, and the split counts the launches used. On the CPU the
    interpreter counts one SM, so its policy never splits: every trial is forced."""
    on_gpu = device.type == "cuda"
    sizes = SPLIT_GPU_SIZES if on_gpu else SPLIT_CPU_SIZES
    if on_gpu and more_heads:
        sizes = MixSizes(sizes.max_seqs, sizes.max_context, sizes.max_chunk,
                         sizes.heads + SPLIT_GPU_MORE_HEADS)  # fmt: skip
    counts = SPLIT_COUNTS if on_gpu else SPLIT_COUNTS[1:]
    results = {}
    for dtype in dtypes:
        started = time.monotonic()
        found = {"rel_err": 0.0, "torch_rel_err": 0.0, "cache_equal": True,
                 "repeat_equal": True, "launches": 0, "splits": []}  # fmt: skip
        for heads in sizes.heads:
            for trial in range(trials):
                num_splits = counts[trial % len(counts)]
                seed = 7000 + 100 * heads[1] + trial
                mixed = not on_gpu and num_splits and trial % 3 == 2
                one = one_trial(seed, device, dtype, sizes, 16, heads, plant, num_splits,
                                decodes_only=not mixed)  # fmt: skip
                for key in ("rel_err", "torch_rel_err"):
                    found[key] = worst(found[key], one[key])
                for key in ("cache_equal", "repeat_equal"):
                    found[key] = found[key] and one[key]
                found["launches"] += 1
                found["splits"].append(one["splits"])
        found["seconds"] = round(time.monotonic() - started, 1)
        results[str(dtype).removeprefix("torch.")] = found
    return results


# ---- the fused kernels against the torch compositions they replace ------------------------

# (dim, query heads, KV heads, head_dim, hidden, tokens): Llama-3-8B's shape on a GPU.
FUSED_GPU_SHAPE = (4096, 32, 8, 128, 14336, 64)
FUSED_CPU_SHAPE = (96, 4, 2, 16, 200, 6)


def fused_ops_check(device: torch.device, dtypes: Sequence[torch.dtype]) -> dict:
    """Per dtype and kernel: max |fused - torch| / max |torch|, the torch composition being
    worker/model.py's unfused path on the same inputs in the same dtype; and whether the
    fused RoPE left every cache slot the step does not write as it was."""
    from worker.fused_ops import FusedOps

    shape = FUSED_GPU_SHAPE if device.type == "cuda" else FUSED_CPU_SHAPE
    ops = FusedOps()
    results = {}
    for dtype in dtypes:
        inputs = FusedInputs(torch.Generator(device=device).manual_seed(11), device, dtype)
        results[str(dtype).removeprefix("torch.")] = {
            "add_rms_norm": _fused_norm_error(ops, inputs, shape),
            **_fused_rope_errors(ops, inputs, shape),
            "silu_mul": _fused_silu_error(ops, inputs, shape),
        }
    return results


@dataclass(slots=True)
class FusedInputs:
    gen: torch.Generator
    device: torch.device
    dtype: torch.dtype

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return (scale * torch.randn(shape, generator=self.gen, device=self.device)).to(self.dtype)


def _error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return relative_error(got.float(), expected.float(), expected.abs().max().item())


def _fused_norm_error(ops: Any, inputs: FusedInputs, shape: tuple[int, ...]) -> float:
    from worker.model import RMSNorm

    dim, num_tokens = shape[0], shape[5]
    x, delta = inputs.randn(num_tokens, dim), inputs.randn(num_tokens, dim)
    weight = 1 + inputs.randn(dim, scale=0.1)
    norm = RMSNorm(dim, 1e-5)
    norm.weight = torch.nn.Parameter(weight, requires_grad=False)
    expected_x, got_x = x.clone(), x.clone()
    expected = norm.add(expected_x, delta)
    got = ops.add_rms_norm(got_x, delta, weight, 1e-5)
    return worst(_error(got, expected), _error(got_x, expected_x))  # the residual too


def _fused_rope_errors(ops: Any, inputs: FusedInputs, shape: tuple[int, ...]) -> dict:
    from worker.model import apply_rope, rope_table

    _, n_heads, n_kv_heads, head_dim, _, num_tokens = shape
    device, block_size = inputs.device, 16
    qkv = inputs.randn(num_tokens, n_heads + 2 * n_kv_heads, head_dim)
    positions = torch.randint(0, 4096, (num_tokens,), generator=inputs.gen, device=device)
    freqs = rope_table(head_dim, 4096, 10000.0).to(device).index_select(0, positions)[:, None]
    num_slots = (-(-num_tokens // block_size) + 2) * block_size
    slots = torch.randperm(num_slots, generator=inputs.gen, device=device)[:num_tokens]
    slots[::5] = -1  # padding rows: written nowhere
    cache = inputs.randn(2, num_slots // block_size, block_size, n_kv_heads, head_dim)
    expected_qk = apply_rope(qkv[:, : n_heads + n_kv_heads], freqs)
    expected_cache, written = cache.clone(), slots >= 0
    for layer, part in ((0, expected_qk[:, n_heads:]), (1, qkv[:, n_heads + n_kv_heads :])):
        flat = expected_cache[layer].view(-1, n_kv_heads, head_dim)
        flat.index_copy_(0, slots[written], part[written])
    got_qkv, got_cache = qkv.clone(), cache.clone()
    q = ops.rope_and_store(got_qkv, freqs, n_heads, got_cache[0], got_cache[1], slots)
    untouched = torch.ones(num_slots, dtype=torch.bool, device=device)
    untouched[slots[written]] = False
    flat_got = got_cache.view(2, num_slots, n_kv_heads, head_dim)
    flat_before = cache.view(2, num_slots, n_kv_heads, head_dim)
    return {
        "rope_store": worst(_error(q, expected_qk[:, :n_heads]),
                            _error(got_cache, expected_cache)),  # fmt: skip
        "cache_untouched_equal": torch.equal(flat_got[:, untouched], flat_before[:, untouched]),
    }


def _fused_silu_error(ops: Any, inputs: FusedInputs, shape: tuple[int, ...]) -> float:
    hidden, num_tokens = shape[4], shape[5]
    gate_up = inputs.randn(num_tokens, 2 * hidden, scale=3.0)
    gate, up = gate_up.clone().split(hidden, dim=-1)
    return _error(ops.silu_and_mul(gate_up), F.silu(gate).mul_(up))


# ---- the bundled model's greedy text -----------------------------------------------------

PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day, a"]


def generate_bundled(device: torch.device, dtype: str, num_tokens: int, **settings) -> dict:
    """Four prompts decoding together (a batch of 4: graphs pad nothing, the ladder has 4)."""
    engine = Engine.from_model_dir(BUNDLED_MODEL, device=device.type, dtype=dtype,
                                   max_num_seqs=8, num_kv_blocks=256, **settings)  # fmt: skip
    outputs = engine.generate(PROMPTS, greedy_params(num_tokens))
    graphs = engine.worker.decode_graphs
    return {
        "token_ids": [out.token_ids for out in outputs],
        "texts": [out.text for out in outputs],
        "graph_replays": sum(graphs.num_replays.values()) if graphs else 0,
    }


def first_difference(a: list[list[int]], b: list[list[int]]) -> str:
    for request, (x, y) in enumerate(zip(a, b, strict=True)):
        for position, (s, t) in enumerate(zip(x, y, strict=True)):
            if s != t:
                return f"differ: request {request}, token {position}"
    return "identical"


def greedy_texts(device: torch.device, num_tokens: int) -> dict:
    """Per dtype: each path's tokens and text (Triton with CUDA graphs, Triton eager, the
    torch reference), and which paths agree."""
    on_gpu = device.type == "cuda"
    found = {}
    for dtype in ("float32", "bfloat16") if on_gpu else ("float32",):
        paths = {
            "triton eager": {"attention_backend": "triton", "enforce_eager": True},
            "triton graphs": {"attention_backend": "triton"},
            "torch reference": {"attention_backend": "torch", "enforce_eager": True},
        }
        if not on_gpu:
            del paths["triton graphs"]
        runs = {name: generate_bundled(device, dtype, num_tokens, **settings)
                for name, settings in paths.items()}  # fmt: skip
        tokens = {name: run["token_ids"] for name, run in runs.items()}
        agree = {}
        if on_gpu:
            agree["graphs vs eager"] = first_difference(tokens["triton graphs"],
                                                        tokens["triton eager"])  # fmt: skip
        agree["triton vs torch"] = first_difference(tokens["triton eager"],
                                                    tokens["torch reference"])  # fmt: skip
        found[dtype] = {"runs": runs, "agree": agree}
    return found


# ---- a random-weight Llama where it runs --------------------------------------------------

LLAMA2_7B = {
    "dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000,
    "multiple_of": 256, "ffn_dim_multiplier": None, "norm_eps": 1e-5, "max_seq_len": 4096,
    "rope_theta": 10000.0,
}  # fmt: skip
# The same code path on a CPU, at a size that runs in seconds (its figures mean nothing).
SMOKE = {**LLAMA2_7B, "dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 512}
BOS_ID, EOS_ID = 1, 2


class IdTokenizer(Tokenizer):
    """Token i <-> the word `t<i>`; 0, 1, 2 are <unk>, BOS, EOS as in Llama's vocabulary. The
    GPU machine has no Llama 2 tokenizer (it is Meta's file, kept out of the project), and
    detokenizing still happens for every token, at about the cost SentencePiece has."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.bos_id, self.eos_ids = vocab_size, BOS_ID, (EOS_ID,)
        self.add_bos = True

    def _encode(self, text: str) -> list[int]:
        return [int(word.removeprefix("t")) for word in text.split()]

    def anchor_id(self) -> int:
        return EOS_ID + 1  # decodes to " t3"

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(f" t{i}" for i in token_ids if i > EOS_ID)

    def id_to_piece(self, token_id: int) -> str:
        return f"▁t{token_id}"


def random_llama_engine(params: dict[str, Any], device: str, dtype: torch.dtype,
                        **settings: Any) -> tuple[Engine, RecordingWorker]:  # fmt: skip
    """An engine over a random-weight Llama of shape `params`, its weights drawn on `device`;
    `settings` are EngineConfig fields by name."""
    args = args_from_meta_params(params, int(params["vocab_size"]))
    weights = random_weights(params, 0, device=device, dtype=dtype)
    checkpoint = LoadedCheckpoint(args=args, weights=weights, bos_id=BOS_ID, eos_id=EOS_ID)
    config = EngineConfig.from_kwargs(model=f"random-llama-{params['dim']}x{params['n_layers']}",
                                      device=device, dtype=str(dtype).removeprefix("torch."),
                                      **settings)  # fmt: skip
    worker = RecordingWorker(ModelRunner(config.worker, checkpoint=checkpoint))
    return Engine(worker, IdTokenizer(args.vocab_size), config), worker


def step_weight_bytes(runner: ModelRunner) -> tuple[int, int]:
    """(all weight bytes, the bytes a decode step reads): a step reads one row of the
    embedding table per token, and every other weight whole."""
    total = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    embedding = runner.model.tok_embeddings.weight
    return total, total - embedding.numel() * embedding.element_size()


def copy_bandwidth(device: torch.device, nbytes: int, repeats: int = 10) -> float:
    """Bytes per second a device-to-device copy moves (each byte read once, written once)."""
    seconds = _time_copies(device, nbytes, repeats)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # else the KV cache, sized by free memory, loses these bytes
    return 2 * nbytes * repeats / seconds


def _time_copies(device: torch.device, nbytes: int, repeats: int) -> float:
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)  # not zeros
    dst = torch.empty_like(src)
    dst.copy_(src)
    return timed(lambda: [dst.copy_(src) for _ in range(repeats)])[0]


def decode_steps(engine: Engine, worker: RecordingWorker, batch: int, prompt_len: int,
                 num_tokens: int, lora: str | None = None) -> dict[str, float]:  # fmt: skip
    """Median wall time of an engine step, and of the worker's part of it, while `batch`
    requests decode together (their prefill steps left out), on LoRA adapter `lora` (None:
    the base model)."""
    rng = np.random.default_rng(batch)
    for _ in range(batch):
        engine.add_request(random_tokens(rng, engine.info.vocab_size, prompt_len),
                           greedy_params(num_tokens), lora=lora)  # fmt: skip
    engine_ms, worker_ms = [], []
    while engine.has_unfinished():
        num_before = len(worker.times)
        start = time.perf_counter()
        engine.step()
        seconds = time.perf_counter() - start
        # Steps in which every request computed one token (prefills left out).
        if len(worker.times) == num_before + 1 and worker.times[-1][0] == batch:
            engine_ms.append(1e3 * seconds)
            worker_ms.append(1e3 * worker.times[-1][1])
    if not engine_ms:
        raise RuntimeError(f"no step of {batch} decodes ran (did the requests fail?)")
    return {"batch": batch, "decode_steps": len(engine_ms),
            "engine_step_ms": statistics.median(engine_ms),
            "worker_step_ms": statistics.median(worker_ms)}  # fmt: skip


def graph_replays(worker: RecordingWorker) -> int:
    graphs = worker.inner.decode_graphs
    return sum(graphs.num_replays.values()) if graphs else 0


def loom_throughput(engine: Engine, worker: RecordingWorker, workload: Workload) -> dict:
    replays_before, first_step = graph_replays(worker), len(worker.times)
    wall, _ = run_workload(engine, workload)
    return {
        "requests": len(workload.prompts), "seconds": round(wall, 2),
        "output_tok_s": workload.num_output_tokens / wall,
        "total_tok_s": (workload.num_prompt_tokens + workload.num_output_tokens) / wall,
        "steps": len(worker.times) - first_step,
        "graph_replays": graph_replays(worker) - replays_before,
        "preemptions": engine.stats().num_preemptions,
    }  # fmt: skip


def recapture_graphs(runner: ModelRunner, max_num_seqs: int, num_splits: int | None) -> None:
    """Capture the decode graphs again with split-KV forced to `num_splits` (None: the
    policy), the old graphs given back first."""
    from worker.cuda_graphs import capture_decode_graphs

    runner.decode_graphs = None
    gc.collect()
    torch.cuda.empty_cache()
    runner.attention_backend.num_splits = num_splits
    runner.decode_graphs = capture_decode_graphs(runner.model, runner.kv_cache,
                                                 runner.attention_backend, runner.device,
                                                 max_num_seqs, enforce_eager=False)  # fmt: skip


def kv_bytes_read(args: Any, context: int, dtype: torch.dtype) -> int:
    """Bytes of K and V one decode of `context` tokens reads, over every layer."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * args.n_layers * context * args.n_kv_heads * args.head_dim * element


# ---- Triton compiles, split-KV timings, kernels per decode layer (a GPU only) ----------------


class TritonCompiles:
    """Names of the Triton kernels compiled (a variant met for the first time in this process)
    since the last `clear()`, through Triton's post-compile hook."""

    def __init__(self) -> None:
        from triton import knobs

        self.names: list[str] = []
        knobs.runtime.jit_post_compile_hook = self._compiled

    def _compiled(self, **info: Any) -> None:
        self.names.append(getattr(info.get("fn"), "name", "?"))

    def clear(self) -> None:
        self.names = []


def attention_timings(device: torch.device, dtype: torch.dtype, bandwidth: float,
                      shapes: Sequence[tuple[int, int, int]], contexts: Sequence[int],
                      split_counts: Sequence[int]) -> list[dict]:  # fmt: skip
    """The attention launch alone for one decode (batch 1) per head shape (query heads, KV
    heads, head_dim), context length and split count (0: as the policy chooses here): median
    microseconds, against the floor of reading that context's K and V once at copy
    bandwidth."""
    rows = []
    for n_heads, n_kv_heads, head_dim in shapes:
        for context in contexts:
            decode = OneDecode(device, dtype, (n_heads, n_kv_heads, head_dim), context)
            floor_us = 1e6 * decode.kv_bytes / bandwidth
            for splits in split_counts:
                us, used = decode.time(splits or None)
                rows.append({"n_kv_heads": n_kv_heads, "context": context, "splits": used,
                             "policy": splits == 0, "us": round(us, 1),
                             "floor_us": round(floor_us, 1),
                             "vs_floor": round(us / floor_us, 2)})  # fmt: skip
            del decode
    return rows


class OneDecode:
    """A batch-1 decode's attention over random K/V: its launch alone, timed."""

    def __init__(self, device: torch.device, dtype: torch.dtype, heads: tuple[int, int, int],
                 context: int) -> None:  # fmt: skip
        n_heads, self.n_kv_heads, head_dim = heads
        self.backend = create_attention_backend("triton", device, 16)
        blocks = -(-context // 16)
        self.kv_bytes = 2 * blocks * 16 * self.n_kv_heads * head_dim * dtype.itemsize
        shape = (2, blocks, 16, self.n_kv_heads, head_dim)
        self.cache = torch.randn(shape, device=device, dtype=dtype)
        self.q = torch.randn((1, n_heads, head_dim), device=device, dtype=dtype)
        state = RequestState("t", [0] * context, list(range(blocks)), GREEDY, context - 1,
                             context)  # fmt: skip
        self.meta = build_step_batch([(state, 1)], 16, device, self.backend).attn

    def attend(self) -> None:
        self.backend.forward(self.q, None, None, self.cache[0], self.cache[1], self.meta)

    def time(self, num_splits: int | None) -> tuple[float, int]:
        """(median microseconds, the split count used) with `num_splits` forced (None: the
        backend's policy on this device). On a GPU, CUDA events around each launch with the
        L2 cache flushed before it (triton's do_bench); on the CPU, a wall clock."""
        self.backend.num_splits = num_splits
        used = self.backend.splits_for(self.meta, self.n_kv_heads)
        if self.q.is_cuda:
            from triton.testing import do_bench

            return 1e3 * do_bench(self.attend, warmup=10, rep=60, return_mode="median"), used
        self.attend()  # the first launch outside the timing, as do_bench's warm-up
        return 1e6 * statistics.median(timed(self.attend)[0] for _ in range(3)), used


# Kernels named so are GEMMs (cuBLAS and CUTLASS names, a split-K's reduce among them).
GEMM_NAMES = ("gemm", "gemv", "cutlass", "cublas", "xmma", "nvjet", "splitk")


def decode_layer_kernels(device: torch.device, dtype: torch.dtype, params: dict[str, Any],
                         cases: dict[str, list[int]]) -> dict:  # fmt: skip
    """Per decode case (its context lengths): the CUDA kernels one layer launches, from the
    profiler's count of an eager decode forward of a 4-layer model minus a 2-layer one,
    halved; split into GEMMs and the rest by name."""
    from torch.profiler import ProfilerActivity, profile

    counts: dict[tuple[str, int], Counter[str]] = {}
    for n_layers in (2, 4):
        engine_params = {**params, "n_layers": n_layers}
        engine, worker = random_llama_engine(engine_params, device.type, dtype, enforce_eager=True,
                                             num_kv_blocks=2560)  # fmt: skip
        runner = worker.inner
        for case, contexts in cases.items():
            scheduled, first = [], 0
            for i, context in enumerate(contexts):
                ids = list(range(first, first + -(-context // 16)))
                first += len(ids)
                state = RequestState(f"r{i}", [5] * context, ids, GREEDY, context - 1, context - 1)
                scheduled.append((state, 1))
            batch = runner.build_batch(scheduled)

            def forward(runner=runner, batch=batch) -> None:
                with torch.inference_mode():
                    hidden = runner.model(batch.input_ids, batch.positions,
                                          runner.kv_cache.layers, batch.attn)  # fmt: skip
                    runner.model.compute_logits(hidden, batch.logits_rows)

            forward()  # compiles nothing new, warms cuBLAS
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                forward()
                torch.cuda.synchronize()
            counts[case, n_layers] = Counter(
                event.name for event in prof.events()
                if event.device_type == torch.autograd.DeviceType.CUDA
            )  # fmt: skip
        del engine, worker, runner
        gc.collect()
        torch.cuda.empty_cache()
    found = {}
    for case in cases:
        more, fewer = counts[case, 4], counts[case, 2]
        per_layer = {name: (more[name] - fewer[name]) / 2 for name in more | fewer
                     if more[name] != fewer[name]}  # fmt: skip
        gemms = {n: c for n, c in per_layer.items() if any(g in n.lower() for g in GEMM_NAMES)}
        others = {n: c for n, c in per_layer.items() if n not in gemms}
        found[case] = {"gemms": sum(gemms.values()), "others": sum(others.values()),
                       "other_names": others, "gemm_names": gemms}  # fmt: skip
    return found


# ---- transformers' generate --------------------------------------------------------------


def random_hf_llama(params: dict[str, Any], device: str, dtype: torch.dtype):
    """Hugging Face's LlamaForCausalLM of the same shape, initialised randomly on `device`
    (its weights differ from Loom's: only its speed is compared)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bench.peer_systems import without_eos

    args = args_from_meta_params(params, int(params["vocab_size"]))
    config = LlamaConfig(
        vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads, max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
    )  # fmt: skip
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise straight in the target dtype
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    return without_eos(model).eval()


def hf_throughput(model, workload: Workload, batch_size: int, budget_s: float) -> dict:
    """Static batches of `batch_size` in arrival order while the budget lasts (a batch is
    started only when the last one says it will fit); the rate is over the batches run."""
    from bench.peer_systems import hf_generate_batch

    hf_generate_batch(model, [workload.prompts[0][:8]], [2])  # warm-up
    batch_seconds: list[float] = []
    num_requests = 0
    while num_requests < len(workload.prompts):
        spent = sum(batch_seconds)
        if batch_seconds and spent / len(batch_seconds) > budget_s - spent:
            break
        batch = workload.head(num_requests + batch_size)
        batch = Workload(batch.prompts[num_requests:], batch.max_tokens[num_requests:])
        wall, _ = timed(lambda b=batch: hf_generate_batch(model, b.prompts, b.max_tokens))
        batch_seconds.append(wall)
        num_requests = min(num_requests + batch_size, len(workload.prompts))
    done, first = workload.head(num_requests), workload.head(batch_size)
    seconds = sum(batch_seconds)
    return {
        "requests": num_requests, "batches": len(batch_seconds), "batch_size": batch_size,
        "batch_seconds": [round(s, 2) for s in batch_seconds], "seconds": round(seconds, 2),
        "output_tok_s": done.num_output_tokens / seconds,
        "total_tok_s": (done.num_prompt_tokens + done.num_output_tokens) / seconds,
        "first_batch_output_tok_s": first.num_output_tokens / batch_seconds[0],
    }  # fmt: skip


# ---- LoRA adapters: the Triton path against the torch path, adapters against the base ------

# (rank, adapted modules) of the check's adapters, under a max rank of 64.
LORA_ADAPTERS = ((8, ("q", "v", "gate")), (16, ("q", "k", "v", "o", "gate", "up", "down")),
                 (64, ("k", "o", "up", "down")), (64, ("q", "k", "v", "o", "gate", "up", "down")))
# Row counts of a step: a decode, a few, a decode batch's tile and more, a prefill's.
LORA_GPU_ROWS, LORA_CPU_ROWS = (1, 7, 64, 300), (1, 7, 37)
# One layer's projections: Llama-3-8B's (GQA: q and k/v slices of other widths); a toy one.
LORA_GPU_SHAPE = BaseShapes(dim=4096, q_dim=4096, kv_dim=1024, hidden_dim=14336, n_layers=1,
                            n_heads=32, n_kv_heads=8)  # fmt: skip
LORA_CPU_SHAPE = BaseShapes(dim=64, q_dim=64, kv_dim=32, hidden_dim=80, n_layers=1, n_heads=4,
                            n_kv_heads=2)  # fmt: skip


def lora_kernel_check(device: torch.device, dtypes: Sequence[torch.dtype], shape: Any,
                      plant: str | None = None) -> dict:  # fmt: skip
    """Per dtype: the Triton adapter path (worker/lora_triton.py) against the torch path in
    float32 on the same rounded inputs and adapters, as max |error| / max |adapter term| over
    every projection of one layer of `shape` (a BaseShapes), each row count, rows in
    adapter runs and shuffled, a fifth of them on no adapter; the torch path in the dtype for
    scale; whether base-only rows kept their bits and a repeated launch gave the same bits.
    `plant` "wrong-kernel" gives the kernels each row's neighbour's slot (an indexing bug)."""
    from worker.lora_batch import lora_step
    from worker.lora_slots import LoraSlots
    from worker.lora_triton import TritonLoraStep

    rows_list = LORA_GPU_ROWS if device.type == "cuda" else LORA_CPU_ROWS
    results = {}
    for dtype in dtypes:
        gen = torch.Generator().manual_seed(5)
        adapters = {i + 1: random_lora_adapter(shape, i + 1, rank, modules, dtype, gen, device)
                    for i, (rank, modules) in enumerate(LORA_ADAPTERS)}  # fmt: skip
        exact = {i: _float32_adapter(a) for i, a in adapters.items()}
        slots = LoraSlots(len(adapters), 64, shape, dtype, device, fused=True)
        for lora_id, adapter in adapters.items():
            slots.store(lora_id - 1, adapter)
        found = {"rel_err": 0.0, "torch_rel_err": 0.0, "base_rows_equal": True,
                 "repeat_equal": True, "launches": 0}  # fmt: skip
        for num_rows in rows_list:
            for shuffled in (False, True):
                rng = random.Random(num_rows + shuffled)
                ids = sorted(rng.choice([0, 0, 1, 2, 3, 4]) for _ in range(num_rows))
                if shuffled:
                    rng.shuffle(ids)
                runs = [(r, r + 1, i) for r, i in enumerate(ids) if i]  # one row per run
                slots_of_rows = torch.tensor([i - 1 for i in ids], device=device)
                if plant == "wrong-kernel":
                    slots_of_rows = slots_of_rows.roll(1)
                step = TritonLoraStep(slots, slots_of_rows)
                for name, projection in slots.layers[0].items():
                    x = torch.randn((num_rows, projection.a.shape[-1]), generator=gen).to(dtype)
                    base = torch.randn((num_rows, projection.b.shape[1]), generator=gen).to(dtype)
                    x, base = x.to(device), base.to(device)
                    got, again, low, ref = base.clone(), base.clone(), base.clone(), base.float()
                    step.add(got, x, 0, name)
                    step.add(again, x, 0, name)
                    lora_step(runs, adapters).add(low, x, 0, name)
                    lora_step(runs, exact).add(ref, x.float(), 0, name)
                    scale = (ref - base.float()).abs().max().item() or 1.0
                    found["rel_err"] = worst(found["rel_err"], relative_error(got.float(), ref,
                                                                              scale))  # fmt: skip
                    found["torch_rel_err"] = worst(found["torch_rel_err"],
                                                   relative_error(low.float(), ref, scale))
                    on_base = torch.tensor([i == 0 for i in ids], device=device)
                    found["base_rows_equal"] &= torch.equal(got[on_base], base[on_base])
                    found["repeat_equal"] &= torch.equal(got, again)
                    found["launches"] += 2
        results[str(dtype).removeprefix("torch.")] = found
    return results


def _float32_adapter(adapter: Any) -> Any:
    from worker.lora_weights import LoraAdapter, LoraPart, LoraProjection

    layers = [{name: LoraProjection(p.a.float(), [LoraPart(q.out_start, q.out_end, q.rank_start,
                                                           q.rank_end, q.b.float())
                                                  for q in p.parts])
               for name, p in layer.items()} for layer in adapter.layers]  # fmt: skip
    return LoraAdapter(adapter.lora_id, adapter.name, layers)


def lora_throughput(params: dict[str, Any], device: str, dtype: torch.dtype, adapters_dir: Any,
                    workload: Workload, max_num_seqs: int) -> dict:  # fmt: skip
    """The workload on the base model alone, then spread round-robin over 4 random rank-16
    adapters of every projection (written as PEFT files to `adapters_dir`), on one engine
    (graphs on a GPU); output tokens/s of each, the adapted steps replayed from graphs, and
    batch-1 and batch-32 decode steps on the base and on one adapter."""
    from worker.random_model import write_random_lora

    specs = tuple(f"a{i}={write_random_lora(adapters_dir / f'a{i}', params, 16, i)}"
                  for i in range(4))  # fmt: skip
    engine, worker = random_llama_engine(params, device, dtype, lora=specs, max_loras=4,
                                         max_lora_rank=16, max_num_seqs=max_num_seqs)  # fmt: skip
    graphs = worker.inner.decode_graphs
    run_workload(engine, workload.head(8), [f"a{i % 4}" for i in range(8)])  # untimed: loads
    found: dict[str, Any] = {"slotted": worker.inner.loras.slots is not None}
    spread = [f"a{i % 4}" for i in range(len(workload.prompts))]
    for name, loras in (("base", None), ("4 adapters", spread)):
        adapted_before = graphs.num_adapted_replays if graphs else 0
        wall, _ = run_workload(engine, workload, loras)
        found[name] = {"seconds": round(wall, 2),
                       "output_tok_s": workload.num_output_tokens / wall,
                       "adapted_replays": (graphs.num_adapted_replays if graphs else 0)
                       - adapted_before}  # fmt: skip
    for batch in (1, 32):
        for lora in (None, "a0"):
            key = f"batch{batch}_{'adapter' if lora else 'base'}"
            found[key] = decode_steps(engine, worker, batch, 64, 32 if device == "cuda" else 4,
                                      lora)  # fmt: skip
    return found
