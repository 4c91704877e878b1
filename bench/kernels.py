"""Single kernels timed alone.

paged-attention: what paging the KV cache costs, one mixed step on the block cache vs a
contiguous cache.

    python -m bench paged-attention                 # writes its BENCHMARKS.md section
    python -m bench paged-attention --no-write      # print only

The step: 32 decodes with contexts drawn from 100-500 plus one 256-token prefill chunk that
follows 256 cached tokens of its prompt. "Paged" is the worker as it runs, for each attention
backend: K/V in shuffled, non-contiguous blocks, written through a slot mapping and read by
block table. Two contiguous baselines: the CPU kernel on the same step with every sequence's
blocks consecutive in memory (paging without scattered blocks), and a cache that keeps each
sequence's K/V contiguous and head-major ([seq, kv_head, position, dim]) so that SDPA reads
plain views. All run the same weights and must give the same logits.

quant-kernels: one projection on packed GGUF blocks, Loom's CPU kernels (int16 and int8
activations, float activations, dequantize + GEMM) against torch's float32, bfloat16 and weight-only
int8/int4 kernels, at a few row counts.

    python -m bench quant-kernels --rows 1 8 32 128 [--no-write]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.common import (
    DEFAULT_MODEL_DIR,
    GREEDY,
    bench_parser,
    markdown_table,
    publish,
    run_header,
    timed,
)
from worker.attention import create_attention_backend
from worker.kv_cache import KVCache, allocate_kv_cache
from worker.loader import load_checkpoint
from worker.model import Transformer
from worker.runner import resolve_dtype
from worker.step_batch import RequestState, build_step_batch

SECTION = "Worker: paged vs contiguous KV"
QUANT_SECTION = "Packed weights: kernel candidates"
GOAL = 1.05  # paged step time (the fastest backend) / the fastest contiguous step time


@dataclass(slots=True)
class Workload:
    decode_contexts: list[int]  # tokens each decode attends to, its new token included
    prefill_cached: int  # prompt tokens already cached before the chunk
    prefill_chunk: int


# ---- the contiguous baseline -------------------------------------------------------------


@dataclass(slots=True)
class ContiguousMetadata:
    num_decodes: int  # decodes are sequences 0..D-1, rows 0..D-1 of the batch
    decode_positions: torch.Tensor  # [D] where each decode's new K/V goes
    decode_mask: torch.Tensor  # [D, 1, 1, max_context] bool
    prefill_seq: int  # the prefill's sequence slot; its rows follow the decodes
    prefill_cached: int
    prefill_mask: torch.Tensor  # [chunk, cached + chunk] bool


def contiguous_attention(
    q: torch.Tensor,  # [num_tokens, n_heads, head_dim]
    k: torch.Tensor,  # [num_tokens, n_kv_heads, head_dim]
    v: torch.Tensor,
    k_cache: torch.Tensor,  # [num_seqs, n_kv_heads, max_len, head_dim]
    v_cache: torch.Tensor,
    meta: ContiguousMetadata,
) -> torch.Tensor:
    num_tokens, n_heads, head_dim = q.shape
    n_kv_heads = k_cache.shape[1]
    group = n_heads // n_kv_heads
    out = torch.empty_like(q)
    d = meta.num_decodes
    seqs = torch.arange(d, device=q.device)
    k_cache[seqs, :, meta.decode_positions] = k[:d]
    v_cache[seqs, :, meta.decode_positions] = v[:d]
    max_context = meta.decode_mask.shape[-1]
    attended = F.scaled_dot_product_attention(
        q[:d].view(d, n_kv_heads, group, head_dim),  # [D, n_heads, d] -> [D, kv, group, d]
        k_cache[:d, :, :max_context],
        v_cache[:d, :, :max_context],
        attn_mask=meta.decode_mask,
    )
    out[:d] = attended.view(d, n_heads, head_dim)  # [D, kv, group, d] -> [D, n_heads, d]

    chunk = num_tokens - d
    start, end = meta.prefill_cached, meta.prefill_cached + chunk
    k_cache[meta.prefill_seq, :, start:end] = k[d:].transpose(0, 1)
    v_cache[meta.prefill_seq, :, start:end] = v[d:].transpose(0, 1)
    # [chunk, n_heads, d] -> [chunk, kv, group, d] -> [kv, group, chunk, d]
    query = q[d:].view(chunk, n_kv_heads, group, head_dim).permute(1, 2, 0, 3)
    # [kv, end, d] -> [kv, group, end, d], a stride-0 view over the group
    keys = k_cache[meta.prefill_seq, :, :end].unsqueeze(1).expand(-1, group, -1, -1)
    values = v_cache[meta.prefill_seq, :, :end].unsqueeze(1).expand(-1, group, -1, -1)
    attended = F.scaled_dot_product_attention(query, keys, values, attn_mask=meta.prefill_mask)
    # [kv, group, chunk, d] -> [chunk, kv, group, d] -> [chunk, n_heads, d]
    out[d:] = attended.permute(2, 0, 1, 3).reshape(chunk, n_heads, head_dim)
    return out.view(num_tokens, n_heads * head_dim)  # [T, n_heads, d] -> [T, n_heads * d]


# ---- the two steps -----------------------------------------------------------------------


def request_states(
    work: Workload, vocab: int, block_size: int, rng: random.Random, shuffled: bool = True
):
    """RequestStates as the runner holds them, with blocks scattered over a shuffled pool (or,
    not `shuffled`, each sequence's blocks one after another)."""
    lengths = [*work.decode_contexts, work.prefill_cached + work.prefill_chunk]
    blocks_needed = [-(-n // block_size) for n in lengths]
    pool = list(range(sum(blocks_needed)))
    if shuffled:
        rng.shuffle(pool)
    scheduled = []
    token_rng = random.Random(0)  # the same tokens whatever the blocks
    for i, (n, nb) in enumerate(zip(lengths, blocks_needed, strict=True)):
        blocks, pool = pool[:nb], pool[nb:]
        tokens = [token_rng.randrange(vocab) for _ in range(n)]
        cached = n - 1 if i < len(work.decode_contexts) else work.prefill_cached
        state = RequestState(f"r{i}", tokens, blocks, GREEDY, cached, n)
        scheduled.append((state, n - cached))
    return scheduled, sum(blocks_needed)


def paged_step(model, kv_cache: KVCache, scheduled, device, backend) -> torch.Tensor:
    """The runner's step (batch building, forward, logits), sampling aside."""
    batch = build_step_batch(scheduled, kv_cache.block_size, device, backend)
    hidden = model(batch.input_ids, batch.positions, kv_cache.layers, batch.attn)
    return model.compute_logits(hidden, batch.logits_rows)


def contiguous_step(model, kv_layers, scheduled, device) -> torch.Tensor:
    """The same step on per-sequence caches; decodes first, as in the paged batch."""
    decodes = [(st, n) for st, n in scheduled if n == 1]
    [(prefill, chunk)] = [(st, n) for st, n in scheduled if n > 1]
    contexts = [len(st.token_ids) for st, _ in decodes]
    tokens = [st.token_ids[-1] for st, _ in decodes] + prefill.token_ids[prefill.num_computed :]
    cached, end = prefill.num_computed, prefill.num_computed + chunk
    positions = [c - 1 for c in contexts] + list(range(cached, end))
    max_context = max(contexts)
    context_t = torch.tensor(contexts, device=device)
    keys = torch.arange(max_context, device=device)
    meta = ContiguousMetadata(
        num_decodes=len(decodes),
        decode_positions=context_t - 1,
        decode_mask=(keys < context_t[:, None]).view(len(decodes), 1, 1, max_context),
        prefill_seq=len(decodes),
        prefill_cached=cached,
        prefill_mask=torch.ones(chunk, end, dtype=torch.bool, device=device).tril(cached),
    )
    positions_t = torch.tensor(positions, device=device)
    hidden = model(torch.tensor(tokens, device=device), positions_t, kv_layers, meta)
    rows = torch.tensor([*range(len(decodes)), len(tokens) - 1], device=device)
    return model.compute_logits(hidden, rows)


# ---- measurement -------------------------------------------------------------------------


def fill_paged(kv_cache: KVCache, truth: torch.Tensor, scheduled, backend, device) -> None:
    """Write each sequence's cached K/V (`truth` [layers, 2, seq, kv, position, d]) into the
    backend's cache through the backend's own write path: one prefill of the cached tokens."""
    fill = [
        (RequestState(st.req_id, st.token_ids, st.block_ids, GREEDY, 0, len(st.token_ids)),
         st.num_computed)
        for st, _ in scheduled
    ]  # fmt: skip
    batch = build_step_batch(fill, kv_cache.block_size, device, backend)
    n_heads_dummy = truth.shape[3]
    for layer, (k_cache, v_cache) in enumerate(kv_cache.layers):
        # Rows in the batch's order: decodes first, then the one longer prefix.
        order = sorted(range(len(fill)), key=lambda i: fill[i][1] != 1)
        k = torch.cat([truth[layer, 0, i, :, : fill[i][1]].transpose(0, 1) for i in order])
        v = torch.cat([truth[layer, 1, i, :, : fill[i][1]].transpose(0, 1) for i in order])
        q = torch.zeros(k.shape[0], n_heads_dummy, k.shape[2], dtype=k.dtype, device=device)
        backend.forward(q, k.contiguous(), v.contiguous(), k_cache, v_cache, batch.attn)


def measure(args: argparse.Namespace, block_size: int) -> dict[str, dict[str, float]]:
    """Step times of each variant, and each one's max |logit difference| from the first."""
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    loaded = load_checkpoint(args.model, dtype)
    cfg = loaded.args
    rng = random.Random(args.seed)
    work = Workload([rng.randint(100, 500) for _ in range(32)], 256, 256)
    scheduled, num_blocks = request_states(work, cfg.vocab_size, block_size, random.Random(1))
    in_order, _ = request_states(work, cfg.vocab_size, block_size, rng, shuffled=False)
    max_len = max(len(st.token_ids) for st, _ in scheduled)
    truth = torch.empty(
        (cfg.n_layers, 2, len(scheduled), cfg.n_kv_heads, max_len, cfg.head_dim), dtype=dtype
    ).normal_(0.0, 0.5, generator=torch.Generator().manual_seed(args.seed))
    truth = truth.to(device)
    variants: dict[str, object] = {}
    for name in args.backends:
        for shuffled in (True, False) if name == "cpu" else (True,):
            backend = create_attention_backend(name, device, block_size)
            model = Transformer.from_weights(
                cfg, dict(loaded.weights), device, kernels=backend.name == "cpu"
            )
            kv_cache = allocate_kv_cache(cfg, num_blocks, block_size, dtype, device, backend)
            steps = scheduled if shuffled else in_order
            fill_paged(kv_cache, truth, steps, backend, device)
            label = f"paged, {name} backend" if shuffled else f"{name} backend, blocks in order"
            variants[label] = (lambda m=model, c=kv_cache, st=steps, b=backend:
                               paged_step(m, c, st, device, b))  # fmt: skip
    contiguous_model = Transformer.from_weights(cfg, dict(loaded.weights), device,
                                                contiguous_attention)  # fmt: skip
    contiguous_layers = [(truth[i, 0], truth[i, 1]) for i in range(cfg.n_layers)]
    variants["contiguous, SDPA"] = lambda: contiguous_step(
        contiguous_model, contiguous_layers, scheduled, device
    )
    with torch.inference_mode():
        logits = {name: run() for name, run in variants.items()}
        first = next(iter(logits.values()))
        for name, value in logits.items():
            difference = (value - first).abs().max().item()
            if difference > 1e-3 * max(1.0, first.abs().max().item()):
                raise SystemExit(f"{name} logits differ from the others by {difference}")
        for _ in range(args.warmup):
            for run in variants.values():
                run()
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):  # interleaved, so drifting load hits each alike
            for name, run in variants.items():
                times[name].append(timed(run)[0])
    return {
        name: {
            "median": statistics.median(ts),
            "min": min(ts),
            "difference": (logits[name] - first).abs().max().item(),
        }
        for name, ts in times.items()
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("paged-attention", __doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Meta-layout model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    p.add_argument("--block-sizes", type=int, nargs="+", default=[16])
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--backends", nargs="+", default=["cpu", "torch"], help="attention backends")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (args.model / "params.json").exists():
        raise SystemExit(f"{args.model} is missing: python -m bench make-model --out {args.model}")
    rows = []
    default_threads = torch.get_num_threads()
    for threads in args.threads:
        torch.set_num_threads(threads)
        for block_size in args.block_sizes:
            results = measure(args, block_size)
            paged = min(v["median"] for k, v in results.items() if k.startswith("paged"))
            contiguous = min(v["median"] for k, v in results.items() if "paged" not in k)
            for name, r in results.items():
                ratio = r["median"] / contiguous
                rows.append(
                    [threads, block_size, name, f"{r['median'] * 1e3:.1f} ({r['min'] * 1e3:.1f})",
                     f"{ratio:.3f}", f"{r['difference']:.1e}"]
                )  # fmt: skip
                print(f"{threads} threads, block {block_size}, {name}: {r}", file=sys.stderr)
            verdict = "met" if paged / contiguous <= GOAL else "missed"
            rows.append(
                [threads, block_size, "**fastest paged / fastest contiguous**", "",
                 f"**{paged / contiguous:.3f}** ({verdict})", ""]
            )  # fmt: skip
    torch.set_num_threads(default_threads)
    header = [
        "threads",
        "block size",
        "step",
        "ms, median (min)",
        f"/ fastest contiguous (goal <= {GOAL})",
        "max |logit difference|",
    ]
    body = (
        f"One step of {args.model.name}: 32 decodes (contexts drawn from 100-500) plus one "
        f"256-token prefill chunk after 256 cached prompt tokens. {args.repeats} runs of each "
        "variant, interleaved; batch building, forward and logits are timed, sampling is not. "
        "Paged: the worker as it runs, blocks shuffled over the pool. Contiguous baselines: "
        "the CPU kernel with each sequence's blocks consecutive in memory, and a cache "
        "holding each sequence's K/V contiguous and head-major that SDPA reads as views "
        "(decodes padded to the longest, the prefill chunk masked). The logit differences "
        "are against the first row.\n\n"
        f"{run_header(args.device)}\n{markdown_table(header, rows)}\n"
    )
    publish(SECTION, body, not args.no_write)


# ---- quant-kernels -------------------------------------------------------------------------

QUANT_SHAPES = {"SmolLM2 w13 [3072, 576]": (3072, 576), "SmolLM2 w2 [576, 1536]": (576, 1536),
                "7B w13 [22016, 4096]": (22016, 4096)}  # fmt: skip


def quant_kernels(argv: list[str] | None = None) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    from worker.cpu_kernels import load_cpu_kernels

    p = bench_parser("quant-kernels", "one projection on packed GGUF blocks, per kernel")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--threads", type=int, help="default: torch's")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not load_cpu_kernels():
        raise SystemExit("Loom's CPU kernels did not build: nothing to measure")
    rows = []
    with torch.inference_mode():
        for label, (n, k) in QUANT_SHAPES.items():
            w = torch.randn(n, k) / k**0.5
            q41 = torch.from_numpy(quants.quantize(w.numpy(), Q.Q4_1))
            q80 = torch.from_numpy(quants.quantize(w.numpy(), Q.Q8_0))
            for m in args.rows:
                for name, fn in quant_candidates(torch.randn(m, k), w, q41, q80).items():
                    us = best_loop_us(fn, n * k)
                    rows.append([label, m, name, us])
                    print(f"{label} M={m} {name}: {us:.0f} us", file=sys.stderr)
    big_tensor = torch.ones(2**28)  # 1 GiB of float32
    read_s = min(timed(big_tensor.sum)[0] for _ in range(5))
    body = (
        f"{run_header('cpu')}\nMemory read rate: {2**30 / read_s / 1e9:.1f} GB/s (the sum of a "
        f"1 GiB float32 tensor, best of 5). One projection, {torch.get_num_threads()} threads; "
        "the best of 5 timings of a loop. Loom's int16 (the default) and int8 paths quantize "
        "the input rows per 32 values and take integer dot products; its float-activation "
        "candidate dequantizes "
        "each weight row to float32 in L1 and multiplies the float rows; dequantize + GEMM "
        "expands chunks of rows for torch's float32 GEMM. torch's int8/int4 weight-only "
        "kernels need bfloat16 inputs and their own repacked layouts (packed before timing).\n\n"
        + markdown_table(["projection", "rows", "candidate", "µs"], rows)
    )
    publish(QUANT_SECTION, body, not args.no_write)


def quant_candidates(x: torch.Tensor, w: torch.Tensor, q41: torch.Tensor, q80: torch.Tensor):
    ops = torch.ops.loom
    n, k = w.shape
    w_col, w_bf16, xb = w.t().contiguous().t(), w.bfloat16(), x.bfloat16()
    scale = w.abs().amax(1, keepdim=True) / 127
    int8_w = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    int8_s = scale.squeeze(1).bfloat16()
    candidates = {
        "Loom int16 (Q4_1)": lambda: ops.quant_linear_int16(x, q41, 2, k),
        "Loom int16 (Q8_0)": lambda: ops.quant_linear_int16(x, q80, 0, k),
        "Loom int8 (Q4_1)": lambda: ops.quant_linear_int8(x, q41, 2, k),
        "Loom int8 (Q8_0)": lambda: ops.quant_linear_int8(x, q80, 0, k),
        "Loom float activations (Q4_1)": lambda: ops.quant_linear_f32(x, q41, 2, k),
        "Loom dequantize + GEMM (Q4_1)": lambda: ops.quant_linear_dequant(x, q41, 2, k),
        "torch float32 (column-major)": lambda: F.linear(x, w_col),
        "torch bfloat16": lambda: F.linear(xb, w_bf16),
        "torch _weight_int8pack_mm (bf16 x)": lambda: torch._weight_int8pack_mm(xb, int8_w, int8_s),
    }
    try:
        int4_packed = torch._convert_weight_to_int4pack_for_cpu(
            torch.randint(0, 16, (n, k), dtype=torch.int32), 8
        )
        int4_sz = torch.randn(k // 32, n, 2).bfloat16()
        candidates["torch _weight_int4pack_mm_for_cpu (bf16 x)"] = lambda: (
            torch._weight_int4pack_mm_for_cpu(xb, int4_packed, 32, int4_sz)
        )
    except (RuntimeError, AttributeError):  # not in every torch build
        pass
    return candidates


def best_loop_us(fn, size: int) -> float:
    """Microseconds per call: the best of 5 timed loops, each long enough to time."""
    fn()
    loops = max(3, min(200, int(2e8 / size)))
    return min(timed(lambda: [fn() for _ in range(loops)])[0] for _ in range(5)) / loops * 1e6
