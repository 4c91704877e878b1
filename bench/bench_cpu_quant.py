"""Quantized GGUF models on the CPU: the kernel candidates, accuracy against the float32
oracle, and Loom against llama.cpp's llama-server on the same file in the same run.

    python -m bench.bench_cpu_quant kernels
    python -m bench.bench_cpu_quant accuracy --server PATH/llama-server
    python -m bench.bench_cpu_quant serve --server PATH/llama-server --gguf FILE [--name NAME]
    python -m bench.bench_cpu_quant big --server PATH/llama-server

llama-server is built from source with native flags (bench/bench_llamacpp.py's docstring).
`serve` runs one stream (a 16-token prompt, 128 greedy tokens) and 32 requests (prompts
16-256, outputs 16-256, random ids, EOS ignored), llama.cpp with 1, 8, 16 and 32 slots and
its best kept, and times start to first token (a fresh process, from spawn to the first
token of a 1-token request). `big` writes a Llama-2-7B-shaped Q4_0 GGUF of random blocks
under bench/models/ (block by block, never in float32), then measures each system's peak
RSS from start to its first token and its one-stream decode rate.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import torch

from bench.common import (
    Workload,
    build_engine,
    markdown_table,
    run_header,
    run_workload,
    uniform_workload,
    warm_up,
    write_section,
)
from bench.peer_systems import LlamaServer
from modelfiles.model_source import smollm2_path

REPO = Path(__file__).resolve().parent.parent
SLOTS = (1, 8, 16, 32)
SEVEN_B = REPO / "bench" / "models" / "llama7b-q4_0.gguf"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def best_of(fn, repeats: int) -> float:
    return min(fn() for _ in range(repeats))


# ---- kernels ---------------------------------------------------------------------------------


def kernels(args: argparse.Namespace) -> None:
    from gguf import GGMLQuantizationType as Q
    from gguf import quants

    from worker.cpu_kernels import load_cpu_kernels

    assert load_cpu_kernels()
    shapes = {"SmolLM2 w13 [3072, 576]": (3072, 576), "SmolLM2 w2 [576, 1536]": (576, 1536),
              "7B w13 [22016, 4096]": (22016, 4096)}  # fmt: skip
    rows = []
    for label, (n, k) in shapes.items():
        w = torch.randn(n, k) / k**0.5
        q41 = torch.from_numpy(quants.quantize(w.numpy(), Q.Q4_1))
        q80 = torch.from_numpy(quants.quantize(w.numpy(), Q.Q8_0))
        w_col = w.t().contiguous().t()
        # torch's weight-only int8 / int4 kernels, in their own layouts (packed here, not timed).
        int8_w = torch.clamp(torch.round(w / (w.abs().amax(1, keepdim=True) / 127)), -127, 127)
        int8_w, int8_s = int8_w.to(torch.int8), w.abs().amax(1) / 127
        try:
            int4_packed = torch._convert_weight_to_int4pack_for_cpu(
                torch.randint(0, 16, (n, k), dtype=torch.int32), 8
            )
            int4_sz = torch.randn(k // 32, n, 2).bfloat16()
        except (RuntimeError, AttributeError):
            int4_packed = int4_sz = None
        for m in args.rows:
            x = torch.randn(m, k)
            weights = (q41, q80, w_col, w.bfloat16(), int8_w, int8_s, int4_packed, int4_sz)
            candidates = kernel_candidates(x, k, *weights)
            for name, fn in candidates.items():
                us = time_us(fn, n * k)
                rows.append([label, m, name, us])
                log(f"{label} M={m} {name}: {us:.0f} us")
    big_tensor = torch.ones(2**28)  # 1 GiB of float32
    read_s = min(timed_s(lambda: big_tensor.sum()) for _ in range(5))
    body = (
        f"{run_header('cpu')}\nMemory read rate: {2**30 / read_s / 1e9:.1f} GB/s (the sum of a "
        "1 GiB float32 tensor, best of 5). "
        f"One projection, `threads` = {torch.get_num_threads()}; the best "
        "of 5 timings of a loop. Loom's int8 path quantizes the input rows per 32 values and "
        "takes integer dot products (AVX-512 VNNI here); its float-activation candidate "
        "dequantizes each weight row to float32 in L1 and multiplies the float rows; "
        "dequantize + GEMM expands chunks of rows for torch's float32 GEMM (Loom's path above "
        "32 rows). torch's int8/int4 weight-only kernels need bfloat16 inputs and their own "
        "repacked layouts.\n\n" + markdown_table(["projection", "rows", "candidate", "µs"], rows)
    )
    print(body)
    if args.write:
        write_section("Packed weights: kernel candidates", body)


def kernel_candidates(x, k, q41, q80, w_col, w_bf16, int8_w, int8_s, int4_packed, int4_sz):
    ops = torch.ops.loom
    xb = x.bfloat16()
    candidates = {
        "Loom int8 (Q4_1)": lambda: ops.quant_linear_int8(x, q41, 2, k),
        "Loom int8 (Q8_0)": lambda: ops.quant_linear_int8(x, q80, 0, k),
        "Loom float activations (Q4_1)": lambda: ops.quant_linear_f32(x, q41, 2, k),
        "Loom dequantize + GEMM (Q4_1)": lambda: ops.quant_linear_dequant(x, q41, 2, k),
        "torch float32 (column-major)": lambda: torch.nn.functional.linear(x, w_col),
        "torch bfloat16": lambda: torch.nn.functional.linear(xb, w_bf16),
        "torch _weight_int8pack_mm (bf16 x)": (
            lambda: torch._weight_int8pack_mm(xb, int8_w, int8_s.bfloat16())
        ),
    }
    if int4_packed is not None:
        candidates["torch _weight_int4pack_mm_for_cpu (bf16 x)"] = lambda: (
            torch._weight_int4pack_mm_for_cpu(xb, int4_packed, 32, int4_sz)
        )
    return candidates


def timed_s(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_us(fn, size: int) -> float:
    fn()
    loops = max(3, min(200, int(2e8 / size)))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e6


# ---- accuracy ----------------------------------------------------------------------------------

PROMPTS = ["The capital of France is", "def fibonacci(n):", "你好！今天",
           "Once upon a time, a little fox", "The three primary colors are"]  # fmt: skip


def accuracy(args: argparse.Namespace) -> None:
    from scheduler import Engine, SamplingParams
    from tests.worker.driver import all_position_logits

    gguf = smollm2_path()
    oracle = Engine.from_model_dir("smollm2", device="cpu", num_kv_blocks=64, quantization="none")
    packed = Engine.from_model_dir("smollm2", device="cpu", num_kv_blocks=64)
    server = LlamaServer(args.server, gguf, 1, 512, args.port, torch.get_num_threads())
    errors: dict[str, list[float]] = {"Loom (packed)": [], "llama.cpp": []}
    top1: dict[str, list[bool]] = {name: [] for name in errors}
    same_text = {name: 0 for name in errors}
    skipped = 0
    try:
        for text in PROMPTS:
            prompt = oracle.tokenizer.encode(text)
            greedy = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
            ids = oracle.generate([prompt], greedy)[0].token_ids
            sequence = prompt + ids
            truth = torch.log_softmax(all_position_logits(oracle.worker, sequence).double(), -1)
            ours = torch.log_softmax(
                all_position_logits(packed.worker, sequence, chunk=8).double(), -1
            )
            same_text["Loom (packed)"] += packed.generate([prompt], greedy)[0].token_ids == ids
            same_text["llama.cpp"] += server.complete(prompt, 32) == ids
            for pos in range(len(prompt) - 1, len(sequence) - 1):
                mine = ours[pos].topk(10)
                errors["Loom (packed)"] += (mine.values - truth[pos, mine.indices]).abs().tolist()
                top1["Loom (packed)"].append(int(mine.indices[0]) == int(truth[pos].argmax()))
                theirs = llama_top_logprobs(server, sequence[: pos + 1], 10)
                if theirs is None:
                    skipped += 1
                    continue
                for token, logprob in theirs:
                    errors["llama.cpp"].append(abs(logprob - float(truth[pos, token])))
                top1["llama.cpp"].append(theirs[0][0] == int(truth[pos].argmax()))
    finally:
        server.close()
    rows = [
        [name, len(e), statistics.mean(e), statistics.quantiles(e, n=100)[98], max(e),
         f"{sum(top1[name])}/{len(top1[name])}", f"{same_text[name]}/{len(PROMPTS)}"]
        for name, e in errors.items()
    ]  # fmt: skip
    body = (
        f"{run_header('cpu')}\nSmolLM2-135M-Instruct's Q4_1 GGUF (Q8_0 embedding and tied LM "
        "head). The oracle is Loom with `--quantization none` (every tensor dequantized to "
        "the reference values, float32). For each prompt the oracle's 32 greedy tokens are "
        "fed back (teacher forcing) and, after every prefix, each system's 10 likeliest "
        "tokens are scored against the oracle's logprob of the same token: Loom's packed "
        "path in steps of 8 tokens (the int8 path), llama.cpp through llama-server's "
        "`n_probs` (a 1-token completion of each prefix; "
        f"{skipped} prefixes whose next token is part of a UTF-8 character come back "
        "without probabilities and are left out). Prompts: "
        + ", ".join(repr(p) for p in PROMPTS)
        + ".\n\n"
        + markdown_table(
            [
                "system",
                "scored logprobs",
                "mean |error|",
                "p99 |error|",
                "max |error|",
                "top-1 = oracle's",
                "32-token greedy text = oracle's",
            ],
            rows,
        )  # fmt: skip
    )
    print(body)
    if args.write:
        write_section("Packed weights: accuracy against the float32 oracle", body)


def llama_top_logprobs(
    server: LlamaServer, prompt: list[int], n: int
) -> list[tuple[int, float]] | None:
    # ignore_eos: without it a prefix whose likeliest next token ends the text comes back
    # without probabilities (the logprobs come from the raw logits either way). A token that
    # is part of a UTF-8 character comes back without them too: None, that prefix is skipped.
    body = {"prompt": prompt, "n_predict": 1, "temperature": 0.0, "n_probs": n,
            "cache_prompt": False, "ignore_eos": True}  # fmt: skip
    request = urllib.request.Request(
        f"{server.url}/completion", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as reply:
        answer = json.load(reply)
    if not answer.get("completion_probabilities"):
        return None
    probs = answer["completion_probabilities"][0]
    # Without post_sampling_probs: logprobs of the full softmax of the raw logits.
    return [(int(p["id"]), float(p["logprob"])) for p in probs["top_logprobs"]]


# ---- serving ----------------------------------------------------------------------------------


def loom_ttft(model: str, extra: dict[str, object] | None = None) -> tuple[float, int]:
    """Seconds from spawning a fresh process to its first token, and its peak RSS (bytes)."""
    settings = {"device": "cpu", "num_kv_blocks": 64, "num_threads": torch.get_num_threads(),
                **(extra or {})}  # fmt: skip
    code = (
        "import resource, sys, time\n"
        "from scheduler import Engine, SamplingParams\n"
        f"e = Engine.from_model_dir({model!r}, **{settings!r})\n"
        "e.generate([[20, 21, 22, 23]], SamplingParams(max_tokens=1, temperature=0))\n"
        "print('first', flush=True)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)\n"
    )
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "first"
    elapsed = time.perf_counter() - start
    rss = int(process.stdout.readline())
    process.wait()
    return elapsed, rss


def llama_ttft(binary: Path, gguf: Path, port: int, threads: int) -> tuple[float, int]:
    start = time.perf_counter()
    server = LlamaServer(binary, gguf, 1, 512, port, threads)
    try:
        server.complete([20, 21, 22, 23], 1)
        elapsed = time.perf_counter() - start
        rss = peak_rss(server.process.pid)
    finally:
        server.close()
    return elapsed, rss


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def serve(args: argparse.Namespace) -> None:
    gguf = args.gguf or smollm2_path()
    model = args.model or str(gguf)
    threads = torch.get_num_threads()
    engine, _ = build_engine(model, "cpu", enable_prefix_caching=False)
    warm_up(engine)
    vocab = engine.info.vocab_size
    workloads = {
        "one stream": (Workload([[100 + i for i in range(16)]], [args.one_stream_tokens]),
                       args.repeats),
        "32 requests": (uniform_workload(32, (16, 256), (16, 256), vocab, 0), args.many_repeats),
    }  # fmt: skip
    # One server per slot count, all started first (an idle llama-server only waits), so each
    # repeat runs Loom and every slot count back to back and they share the machine's state.
    servers = {
        slots: LlamaServer(args.server, gguf, slots, 512, args.port + i, threads)
        for i, slots in enumerate(SLOTS)
    }
    rows = []
    try:
        for server in servers.values():
            server.run(Workload([[20, 21, 22, 23]], [4]))
        for name, (workload, repeats) in workloads.items():
            useful = workload.num_output_tokens
            loom_walls: list[float] = []
            llama_walls: dict[int, list[float]] = {slots: [] for slots in SLOTS}
            for repeat in range(repeats):
                loom_walls.append(run_workload(engine, workload)[0])
                log(f"{name} {repeat + 1}: Loom {useful / loom_walls[-1]:.1f} tok/s")
                for slots, server in servers.items():
                    llama_walls[slots].append(server.run(workload)[0])
                    log(f"{name} {repeat + 1}: llama.cpp {slots} slots "
                        f"{useful / llama_walls[slots][-1]:.1f} tok/s")  # fmt: skip
            loom = min(loom_walls)
            llama = {slots: min(w) for slots, w in llama_walls.items()}
            best_slots = min(llama, key=llama.get)
            sweep = ", ".join(f"{s}: {useful / t:.1f}" for s, t in llama.items())
            rows.append([name, repeats, useful / loom, useful / llama[best_slots], best_slots,
                         llama[best_slots] / loom, sweep])  # fmt: skip
    finally:
        for server in servers.values():
            server.close()
    loom_start = min(loom_ttft(model)[0] for _ in range(2))
    llama_start = min(llama_ttft(args.server, gguf, args.port, threads)[0] for _ in range(2))
    body = (
        f"{run_header('cpu')}\nModel {args.name or Path(gguf).name}, the same GGUF file for "
        f"both; {threads} threads each; greedy, EOS ignored, no prefix cache on either side. "
        "Each repeat runs Loom, then llama.cpp at each slot count (tok/s per count in the "
        "last column), one after the other; the best run of each is kept, and llama.cpp's "
        "best slot count.\n\n"
        + markdown_table(
            [
                "workload",
                "runs each",
                "Loom tok/s",
                "llama.cpp tok/s (best)",
                "best slots",
                "Loom / llama.cpp",
                "llama.cpp tok/s by slots",
            ],
            rows,
        )  # fmt: skip
        + f"\n\nStart to first token (a fresh process, spawn to the first token of a 1-token "
        f"request, best of 2): Loom {loom_start:.2f} s, llama.cpp {llama_start:.2f} s.\n"
    )
    print(body)
    if args.write:
        write_section(f"Loom vs llama.cpp on the CPU: {args.name or Path(gguf).name}", body)


# ---- a 7B-shaped Q4_0 model ------------------------------------------------------------------


def write_7b(path: Path) -> None:
    """Llama-2-7B's shapes, every matrix Q4_0 of random quants with scales near
    1/(8 sqrt(fan-in)), written one tensor at a time (at most one 11008 x 4096 matrix of
    blocks in memory)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFWriter

    dim, hidden, layers, vocab = 4096, 11008, 32, 32000
    rng = np.random.default_rng(0)
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(hidden)
    writer.add_head_count(32)
    writer.add_head_count_kv(32)
    writer.add_rope_dimension_count(128)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_tokenizer_model("llama")
    # SentencePiece needs an unknown piece: <unk>, <s>, </s>, then plain pieces.
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<t{i}>" for i in range(3, vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([2, 3, 3] + [1] * (vocab - 3))
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)

    def q4_0(rows: int, cols: int) -> np.ndarray:
        blocks = rng.integers(0, 256, size=(rows * cols // 32, 18), dtype=np.uint8)
        scale = np.float16(1.0 / (8 * cols**0.5))
        blocks[:, :2] = np.frombuffer(scale.tobytes(), np.uint8)
        return blocks.reshape(rows, cols // 32 * 18)

    shapes = {"token_embd.weight": (vocab, dim), "output.weight": (vocab, dim)}
    for i in range(layers):
        for name, shape in (("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                            ("attn_output", (dim, dim)), ("ffn_gate", (hidden, dim)),
                            ("ffn_up", (hidden, dim)), ("ffn_down", (dim, hidden))):  # fmt: skip
            shapes[f"blk.{i}.{name}.weight"] = shape
    norms = ["output_norm.weight"] + [f"blk.{i}.{n}.weight" for i in range(layers)
                                      for n in ("attn_norm", "ffn_norm")]  # fmt: skip
    for name, (rows, cols) in shapes.items():
        writer.add_tensor_info(name, (rows, cols // 32 * 18), np.dtype(np.uint8),
                               rows * cols // 32 * 18, raw_dtype=Q.Q4_0)  # fmt: skip
    for name in norms:
        writer.add_tensor_info(name, (dim,), np.dtype(np.float32), dim * 4)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for rows, cols in shapes.values():
        writer.write_tensor_data(q4_0(rows, cols))
    for _ in norms:
        writer.write_tensor_data(np.ones(dim, np.float32))
    writer.close()


def big(args: argparse.Namespace) -> None:
    if not SEVEN_B.exists():
        SEVEN_B.parent.mkdir(parents=True, exist_ok=True)
        log(f"writing {SEVEN_B}")
        write_7b(SEVEN_B)
    threads = torch.get_num_threads()
    loom_start, loom_rss = loom_ttft(str(SEVEN_B), {"max_model_len": 512})
    llama_start, llama_rss = llama_ttft(args.server, SEVEN_B, args.port, threads)
    engine, _ = build_engine(str(SEVEN_B), "cpu", enable_prefix_caching=False, max_model_len=512,
                             num_kv_blocks=64)  # fmt: skip
    workload = Workload([[100 + i for i in range(16)]], [args.one_stream_tokens])
    run_workload(engine, Workload([[5, 6, 7]], [4]))
    loom = best_of(lambda: run_workload(engine, workload)[0], args.repeats)
    llama = {}
    for slots in (1, 8):
        server = LlamaServer(args.server, SEVEN_B, slots, 512, args.port, threads)
        try:
            server.run(Workload([[5, 6, 7]], [4]))
            llama[slots] = best_of(lambda s=server: s.run(workload)[0], args.repeats)
        finally:
            server.close()
    best_slots = min(llama, key=llama.get)
    n = workload.num_output_tokens
    rows = [["Loom", loom_rss / 2**30, loom_start, n / loom],
            [f"llama.cpp ({best_slots} slots, best of 1 and 8)", llama_rss / 2**30, llama_start,
             n / llama[best_slots]]]  # fmt: skip
    body = (
        f"{run_header('cpu')}\nA Llama-2-7B-shaped GGUF (32 layers, dim 4096, MLP 11008, "
        "vocabulary 32,000), every matrix Q4_0 of random blocks "
        f"({SEVEN_B.stat().st_size / 2**30:.2f} GiB), written by `write_7b` here. Peak RSS "
        "and start to first token of a fresh "
        f"process; then one stream, a 16-token prompt and {n} greedy tokens, best of "
        f"{args.repeats}, {threads} threads each.\n\n"
        + markdown_table(
            ["system", "peak RSS GiB", "start to first token s", "one stream tok/s"], rows
        )  # fmt: skip
        + f"\n\nLoom / llama.cpp one stream: {llama[best_slots] / loom:.2f}x.\n"
    )
    print(body)
    if args.write:
        write_section("Loom vs llama.cpp on the CPU: a 7B-shaped Q4_0 model", body)


# ---- the batch-1 decode step -------------------------------------------------------------------


def profile_step(args: argparse.Namespace) -> None:
    """One SmolLM2 stream decoding through the engine (scheduler, worker, sampler,
    detokenizer); the torch profiler's self CPU time per operator over 64 decode steps."""
    from torch.profiler import ProfilerActivity, profile

    from scheduler import Engine, SamplingParams

    engine = Engine.from_model_dir("smollm2", device="cpu", num_kv_blocks=64)
    warm_up(engine)
    greedy = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    engine.add_request([100 + i for i in range(16)], greedy)
    for _ in range(8):
        engine.step()
    steps = 64
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    plain_ms = (time.perf_counter() - start) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    rows = [[e.key, e.count // steps, e.self_cpu_time_total / steps / 1e3,
             100 * e.self_cpu_time_total / total] for e in events[:14]]  # fmt: skip
    body = (
        f"{run_header('cpu')}\nSmolLM2-135M-Instruct (Q4_1 packed, Q8_0 tied head), one "
        f"greedy stream through `Engine.step()`: {plain_ms:.2f} ms per decode step "
        f"({1e3 / plain_ms:.0f} tok/s) without the profiler; under it, self CPU time per "
        f"operator per step over {steps} steps ({total / steps / 1e3:.2f} ms in operators):\n\n"
        + markdown_table(["operator", "calls per step", "ms per step", "share %"], rows)
    )
    print(body)
    if args.write:
        write_section(f"SmolLM2 decode step profile: {args.label}", body)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("kernels", "accuracy", "serve", "big", "profile"):
        s = sub.add_parser(name)
        s.add_argument("--write", action="store_true", help="write the section to BENCHMARKS.md")
        if name not in ("kernels", "profile"):
            s.add_argument("--server", type=Path, required=True, help="llama-server binary")
            s.add_argument("--port", type=int, default=8091)
        s.add_argument("--repeats", type=int, default=3)
        s.add_argument("--threads", type=int, help="both systems' threads (default: torch's)")
        s.add_argument("--one-stream-tokens", type=int, default=128)
    sub.choices["kernels"].add_argument("--rows", type=int, nargs="+", default=[1, 8, 32, 128])
    sub.choices["serve"].add_argument("--gguf", type=Path, help="default: SmolLM2's Q4_1 file")
    sub.choices["serve"].add_argument("--model", help="Loom's --model (default: the GGUF)")
    sub.choices["serve"].add_argument("--name", help="the model's name in the section title")
    sub.choices["serve"].add_argument("--many-repeats", type=int, default=1,
                                      help="runs of the 32-request workload")  # fmt: skip
    sub.choices["profile"].add_argument("--label", default="now")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        commands = {"kernels": kernels, "accuracy": accuracy, "serve": serve, "big": big,
                    "profile": profile_step}  # fmt: skip
        commands[args.command](args)


if __name__ == "__main__":
    main()
