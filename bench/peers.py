"""Loom against its peers on one offline workload, in one run: `python -m bench peers`.

    python -m bench peers --peer transformers static              # llama60m, 32 requests
    python -m bench peers --peer transformers static --num-requests 128 --prompt-len 16 512
    python -m bench peers --model smollm2 --peer transformers --batch-sizes 32 --output-len 16 128
    python -m bench peers --peer llamacpp --server PATH/llama-server --gguf FILE.gguf
    python -m bench peers --model smollm2 --peer llamacpp --server PATH/llama-server \\
        --batch-sizes 1 8 16 32 --startup                        # SmolLM2's Q4_1 file
    python -m bench peers --model smollm2 --peer llamacpp --server PATH/llama-server \\
        --num-requests 1 --prompt-len 16 16 --output-len 128 128 --repeats 3   # one stream
    python -m bench peers --peer transformers --num-requests 4 --output-len 8 8 --repeats 1 \\
        --no-write                                                # quick

The workload: random token-id prompts, greedy, EOS ignored, each request exactly its
max_tokens. Every system runs it once untimed first (the first pass over fresh memory is not
what serving costs), then `--repeats` timed runs, the systems taking turns in an order that
rotates each repeat, so that drifting load falls on all alike. Loom runs without its prefix
cache, as the repeats send the same prompts again. A static-batching peer first compares its
batch sizes on the first `--sweep-requests` requests and runs the best; llama.cpp holds one
slot per request unless `--batch-sizes` names slot counts to sweep (1 8 16 32, say).
`python -m bench accuracy --server PATH/llama-server` scores Loom's packed GGUF path and
llama.cpp against the float32 oracle (Loom with `--quantization none`): for each prompt the
oracle's 32 greedy tokens are fed back and, after every prefix, each system's 10 likeliest
tokens are scored against the oracle's logprob of the same token.

`--startup` adds each system's start to first token (a fresh process, spawn to the first
token of a 1-token request, best of 2) and its peak memory.

llama.cpp is not part of Loom: build its server from source and convert the model with its
own converter (F32, so both run the same float32 weights); with `--model smollm2` or another
GGUF file, llama-server reads that very file:

    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-server
    python -m bench export-hf --model bench/models/llama60m --out bench/models/llama60m-hf
    PYTHONPATH=gguf-py python convert_hf_to_gguf.py bench/models/llama60m-hf \\
        --outtype f32 --outfile bench/models/llama60m-f32.gguf
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.common import (
    DEFAULT_MODEL_DIR,
    FIRST_ORDINARY_ID,
    Workload,
    bench_parser,
    greedy_params,
    log,
    markdown_table,
    measure_gemm_flops,
    publish,
    run_header,
    teacher_forced_logits,
    uniform_workload,
    workload_flops,
)  # fmt: skip
from bench.peer_systems import (
    LlamaServer,
    Loom,
    Startup,
    StaticLoop,
    System,
    Transformers,
    llama_startup,
    loom_startup,
)
from modelfiles.model_source import resolve_model, smollm2_path
from worker.config import ACTIVATIONS, QUANTIZATIONS

PEERS = ("transformers", "static", "llamacpp")
LABELS = {"transformers": "transformers", "static loop": "a static batch loop",
          "llama.cpp": "llama.cpp's server"}  # fmt: skip
GOAL_VS_TRANSFORMERS = 2.5  # Loom's useful output tok/s over transformers' best
GOAL_OF_FLOOR = 0.50  # compute floor / Loom wall time
# SmolLM2's control tokens (<|endoftext|>, <|im_start|>, ...) are ids 0-16.
SMOLLM2_FIRST_ORDINARY_ID = 17


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("peers", __doc__)
    p.add_argument("--model", default=str(DEFAULT_MODEL_DIR),
                   help="a Meta or HF directory, a GGUF file, or smollm2")  # fmt: skip
    p.add_argument("--peer", nargs="+", choices=PEERS, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="timed runs of each system")
    p.add_argument("--untimed-pass", action=argparse.BooleanOptionalAction, default=True,
                   help="run the workload once untimed first")  # fmt: skip
    p.add_argument("--batch-sizes", type=int, nargs="+",
                   help="static batch sizes (llama.cpp: slots) to compare; default 8 16 32 for "
                   "static batches, one llama.cpp slot per request")  # fmt: skip
    p.add_argument("--sweep-requests", type=int, default=32,
                   help="batch sizes are compared on the first N requests")  # fmt: skip
    p.add_argument("--max-num-seqs", type=int, default=256, help="Loom's")
    p.add_argument("--max-num-batched-tokens", type=int, default=2048, help="Loom's")
    p.add_argument("--hf-model", type=Path, help="transformers' copy (default: MODEL-hf)")
    p.add_argument("--server", type=Path, help="llama.cpp's llama-server binary")
    p.add_argument("--gguf", type=Path, help="the same model for llama.cpp (default: --model's)")
    p.add_argument("--port", type=int, default=8089, help="llama-server's")
    p.add_argument("--max-model-len", type=int, help="Loom's (a large model's KV cache)")
    p.add_argument("--num-kv-blocks", type=int, help="Loom's (default: sized from memory)")
    p.add_argument("--activations", default="int16", choices=ACTIVATIONS,
                   help="what Loom's packed weights multiply")  # fmt: skip
    p.add_argument("--quantization", default="auto", choices=QUANTIZATIONS,
                   help="Loom's (bf16: a float model's matrices as bfloat16)")  # fmt: skip
    p.add_argument("--startup", action="store_true",
                   help="also time each system from spawn to its first token")  # fmt: skip
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args(argv)


def make_peer(name: str, args: argparse.Namespace, source, max_len: int) -> System:
    if name == "transformers":
        return Transformers(source, args.device, args.hf_model)
    if name == "static":
        return StaticLoop(source, max_len, args.device)
    gguf = args.gguf or (source.path if source.kind == "gguf" else None)
    if args.server is None or gguf is None:
        raise SystemExit("--peer llamacpp needs --server PATH/llama-server and --gguf FILE")
    slots = args.num_requests if args.batch_sizes is None else args.batch_sizes[0]
    return LlamaServer(args.server, gguf, slots, max_len, args.port, torch.get_num_threads())


def sweep(system: System, args: argparse.Namespace, workload: Workload) -> list[list[object]]:
    """Batch sizes compared on the first requests; the system keeps the best. Rows: (size,
    wall s, useful output tok/s)."""
    sizes = args.batch_sizes or ([8, 16, 32] if system.static else [])
    if len(sizes) < 2:
        if sizes and sizes[0] != system.batch_size:
            system.resize(sizes[0])
        return []
    head = workload.head(args.sweep_requests)
    rows = []
    for size in sizes:
        system.resize(size)
        wall, _ = system.run(head)
        rows.append([size, wall, head.num_output_tokens / wall])
        log(f"{system.name}, batch {size}: {wall:.1f} s")
    system.resize(max(rows, key=lambda row: row[2])[0])
    return rows


def timed_runs(systems: list[System], args, workload: Workload) -> tuple[dict, dict]:
    """Per system, its wall times and its last run's outputs."""
    walls: dict[str, list[float]] = {s.name: [] for s in systems}
    outputs: dict[str, list[list[int]]] = {}
    for repeat in range(-1 if args.untimed_pass else 0, args.repeats):
        turn = max(repeat, 0) % len(systems)
        for system in systems[turn:] + systems[:turn]:
            wall, out = system.run(workload)
            for got, n in zip(out, workload.max_tokens, strict=True):
                if len(got) != n:
                    raise RuntimeError(f"{system.name} gave {len(got)} tokens, not {n}")
            outputs[system.name] = out
            if repeat >= 0:
                walls[system.name].append(wall)
                log(f"{system.name}: {wall:.1f} s, {workload.num_output_tokens / wall:.1f} tok/s")
    return walls, outputs


def main(argv: list[str] | None = None) -> None:
    with torch.inference_mode():
        run(parse_args(argv))


def run(args: argparse.Namespace) -> None:
    source = resolve_model(args.model)
    limits = {key: getattr(args, key) for key in ("max_model_len", "num_kv_blocks")
              if getattr(args, key)}  # fmt: skip
    limits["activations"] = args.activations
    limits["quantization"] = args.quantization
    loom = Loom(args.model, args.device, enable_prefix_caching=False,
                max_num_seqs=args.max_num_seqs,
                max_num_batched_tokens=args.max_num_batched_tokens, **limits)  # fmt: skip
    info = loom.engine.info
    first_id = SMOLLM2_FIRST_ORDINARY_ID if source.path == smollm2_path() else FIRST_ORDINARY_ID
    workload = uniform_workload(args.num_requests, tuple(args.prompt_len), tuple(args.output_len),
                                info.vocab_size, args.seed, first_id)  # fmt: skip
    max_len = args.prompt_len[1] + args.output_len[1]
    systems: list[System] = [loom]
    sweeps: dict[str, list[list[object]]] = {}
    try:
        for name in args.peer:
            systems.append(make_peer(name, args, source, max_len))
            sweeps[systems[-1].name] = sweep(systems[-1], args, workload)
        walls, outputs = timed_runs(systems, args, workload)
    finally:
        for system in systems:
            system.close()
    startups = measure_startups(args, source, limits) if args.startup else {}
    report(args, info, workload, systems, walls, outputs, sweeps, startups)


def measure_startups(args: argparse.Namespace, source, limits: dict) -> dict[str, Startup]:
    """Best of 2 per system, Loom's settings as in the timed runs."""
    found = {"Loom": min((loom_startup(args.model, **limits) for _ in range(2)),
                         key=lambda s: s.seconds)}  # fmt: skip
    gguf = args.gguf or (source.path if source.kind == "gguf" else None)
    if "llamacpp" in args.peer:
        threads = torch.get_num_threads()
        found["llama.cpp"] = min((llama_startup(args.server, gguf, args.port, threads)
                                  for _ in range(2)), key=lambda s: s.seconds)  # fmt: skip
    return found


def report(args, info, workload: Workload, systems: list[System], walls, outputs, sweeps,
           startups: dict[str, Startup]) -> None:  # fmt: skip
    useful, n = workload.num_output_tokens, args.num_requests
    median = {name: statistics.median(ws) for name, ws in walls.items()}
    float32 = info.dtype == "float32"
    rows = []
    for s in systems:
        work = workload_flops(info, workload, s.batch_size if s.static else None)
        same = sum(a == b for a, b in zip(outputs[s.name], outputs["Loom"], strict=True))
        rows.append([s.name, median[s.name], useful / median[s.name],
                     f"{median[s.name] / median['Loom']:.2f}x", work / 1e12,
                     work / median[s.name] / 1e9, f"{same}/{n}"])  # fmt: skip
    header = ["system", "wall s (median)", "useful output tok/s", "its wall / Loom's",
              "matmul TFLOP done", "GFLOP/s", "greedy outputs equal to Loom's"]  # fmt: skip
    per_repeat = [[i + 1, name, wall, useful / wall]
                  for name, ws in walls.items() for i, wall in enumerate(ws)]  # fmt: skip
    goals = []
    if "transformers" in median:
        ratio = median["transformers"] / median["Loom"]
        goals.append([f"Loom >= {GOAL_VS_TRANSFORMERS}x transformers' useful tok/s",
                      f"{ratio:.2f}x", verdict(ratio >= GOAL_VS_TRANSFORMERS)])  # fmt: skip
    floor_text = ""
    if float32:
        gemm_rate, gemm_shape = measure_gemm_flops(args.device)
        floor = workload_flops(info, workload) / gemm_rate
        of_floor = floor / median["Loom"]
        goals.append([f"compute floor / Loom wall >= {GOAL_OF_FLOOR:.0%}", f"{of_floor:.0%}",
                      verdict(of_floor >= GOAL_OF_FLOOR)])  # fmt: skip
        floor_text = (
            f"Compute floor: {workload_flops(info, workload) / 1e12:.2f} TFLOP of matmuls "
            "(projections, MLP, attention over each token's causal context, the LM head once "
            f"per output token) at {gemm_rate / 1e9:.1f} GFLOP/s (the best float32 GEMM "
            f"measured here, {gemm_shape}) = {floor:.1f} s.\n\n"
        )
    sweep_header = ["batch size", "wall s", "useful output tok/s"]
    sweep_text = "".join(
        f"{name}: batch sizes compared on the first {args.sweep_requests} requests (the best "
        f"ran the workload):\n\n{markdown_table(sweep_header, rows)}\n\n"
        for name, rows in sweeps.items() if rows
    )  # fmt: skip
    (p_lo, p_hi), (o_lo, o_hi) = args.prompt_len, args.output_len
    peers = " and ".join(LABELS[s.name] for s in systems[1:])
    title = (f"Throughput vs {peers}, {info.model_name}: {n} requests, prompts {p_lo}-{p_hi}, "
             f"outputs {o_lo}-{o_hi}")  # fmt: skip
    if args.quantization != "auto":
        title += f", Loom with --quantization {args.quantization}"
    systems_text = "\n".join(f"- {s.describe()}" for s in systems)
    untimed = "once untimed, then " if args.untimed_pass else ""
    body = f"""{run_header(args.device)}
Workload: {n} requests, prompts uniform in {p_lo}-{p_hi} tokens ({workload.num_prompt_tokens}
in all), outputs uniform in {o_lo}-{o_hi} tokens ({useful} in all), random token ids (seed
{args.seed}), greedy, EOS ignored; model {info.model_name} in {info.dtype} on {args.device}.
Each system ran the workload {untimed}{args.repeats} times timed, taking turns. Useful
tokens are only those each request asked for; matmul work counts what each system computes
(a static batch's padding too).

{systems_text}

{markdown_table(header, rows)}

{sweep_text}{markdown_table(["repeat", "system", "wall s", "useful output tok/s"], per_repeat)}

{floor_text}{markdown_table(["goal", "measured", "result"], goals) if goals else ""}

{startup_text(startups)}
Float32 sums in another order can flip a near-tie argmax, after which a sequence diverges:
outputs that differ from Loom's are that, or a bug.
"""
    publish(title, body, not args.no_write)


def startup_text(startups: dict[str, Startup]) -> str:
    if not startups:
        return ""
    rows = [[name, s.seconds, s.peak_rss / 2**30] for name, s in startups.items()]
    return (
        "Start to first token (a fresh process, spawn to the first token of a 1-token "
        "request, best of 2) and that process's peak memory:\n\n"
        + markdown_table(["system", "start to first token s", "peak RSS GiB"], rows)
        + "\n"
    )


# ---- accuracy against the float32 oracle ------------------------------------------------

ACCURACY_PROMPTS = ["The capital of France is", "def fibonacci(n):", "你好！今天",
                    "Once upon a time, a little fox", "The three primary colors are"]  # fmt: skip


def accuracy(argv: list[str] | None = None) -> None:
    from scheduler import Engine

    p = bench_parser("accuracy", "Loom's packed weights and llama.cpp against the oracle")
    p.add_argument("--model", default="smollm2", help="a GGUF file, or smollm2")
    p.add_argument("--server", type=Path, required=True, help="llama.cpp's llama-server binary")
    p.add_argument("--port", type=int, default=8089, help="llama-server's")
    p.add_argument("--chunk", type=int, default=8, help="tokens per step of Loom's packed path")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args(argv)
    gguf = resolve_model(args.model).path
    settings = {"device": "cpu", "num_kv_blocks": 64}
    with torch.inference_mode():
        oracle = Engine.from_model_dir(args.model, quantization="none", **settings)
        packed = {f"Loom (packed, {name} activations)":
                  Engine.from_model_dir(args.model, activations=name, **settings)
                  for name in ("int16", "float", "int8")}  # fmt: skip
        server = LlamaServer(args.server, gguf, 1, 512, args.port, torch.get_num_threads())
        try:
            scores = score_against_oracle(oracle, packed, server, args.chunk)
        finally:
            server.close()
    rows = [[name, len(s.errors), *(f"{e:.2g}" for e in (  # errors span 1e-5 to 1
             statistics.mean(s.errors), statistics.quantiles(s.errors, n=100)[98], max(s.errors))),
             f"{sum(s.top1)}/{len(s.top1)}", f"{s.same_text}/{len(ACCURACY_PROMPTS)}"]
            for name, s in scores.items()]  # fmt: skip
    header = ["system", "scored logprobs", "mean |error|", "p99 |error|", "max |error|",
              "top-1 = oracle's", "32-token greedy text = oracle's"]  # fmt: skip
    body = (
        f"{run_header('cpu')}\n{Path(gguf).name}. The oracle is Loom with `--quantization "
        "none` (every tensor dequantized to the reference values, float32). For each prompt "
        "the oracle's 32 greedy tokens are fed back (teacher forcing) and, after every "
        "prefix, each system's 10 likeliest tokens are scored against the oracle's logprob "
        f"of the same token: Loom's packed path (with each `--activations`; int16 is the "
        f"default) in steps of {args.chunk} tokens, llama.cpp "
        "through llama-server's `n_probs` (a 1-token completion of each prefix; prefixes "
        "whose next token is part of a UTF-8 character come back without probabilities and "
        "are left out). Prompts: "
        + ", ".join(repr(p) for p in ACCURACY_PROMPTS)
        + ".\n\n"
        + markdown_table(header, rows)
    )
    publish("Packed weights: accuracy against the float32 oracle", body, not args.no_write)


@dataclass(slots=True)
class Scores:
    errors: list[float] = field(default_factory=list)  # |logprob - the oracle's|
    top1: list[bool] = field(default_factory=list)  # the likeliest token is the oracle's
    same_text: int = 0  # prompts whose 32 greedy tokens equal the oracle's


def score_against_oracle(
    oracle, packed: dict[str, object], server: LlamaServer, chunk: int
) -> dict[str, Scores]:
    scores = {name: Scores() for name in [*packed, "llama.cpp"]}
    theirs = scores["llama.cpp"]
    for text in ACCURACY_PROMPTS:
        prompt = oracle.tokenizer.encode(text)
        ids = oracle.generate([prompt], greedy_params(32))[0].token_ids
        sequence = prompt + ids
        logits = teacher_forced_logits(oracle.worker, sequence, len(sequence))
        truth = torch.log_softmax(logits.double(), -1)
        for name, engine in packed.items():
            mine = scores[name]
            logits = teacher_forced_logits(engine.worker, sequence, chunk)
            ours = torch.log_softmax(logits.double(), -1)
            mine.same_text += engine.generate([prompt], greedy_params(32))[0].token_ids == ids
            for pos in range(len(prompt) - 1, len(sequence) - 1):
                top = ours[pos].topk(10)
                mine.errors += (top.values - truth[pos, top.indices]).abs().tolist()
                mine.top1.append(int(top.indices[0]) == int(truth[pos].argmax()))
        theirs.same_text += server.complete(prompt, 32) == ids
        for pos in range(len(prompt) - 1, len(sequence) - 1):
            found = server.top_logprobs(sequence[: pos + 1], 10)
            if found is None:
                continue
            theirs.errors += [abs(logprob - float(truth[pos, token])) for token, logprob in found]
            theirs.top1.append(found[0][0] == int(truth[pos].argmax()))
    return scores


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


if __name__ == "__main__":
    main()
