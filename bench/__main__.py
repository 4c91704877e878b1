"""`python -m bench NAME [options]`: every benchmark, and the models they run.

`python -m bench` lists them; `python -m bench NAME --help` gives a benchmark's options. Each
benchmark imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# name -> (module, function, what it measures); module "" is this one
BENCHMARKS: dict[str, tuple[str, str, str]] = {
    "peers": ("bench.peers", "main",
              "Loom vs transformers, a static batch loop, llama.cpp's server (--peer)"),
    "scheduler": ("bench.scheduler_benches", "scheduler_overhead",
                  "schedule() + update() per decode step, no model"),
    "kv-waste": ("bench.scheduler_benches", "kv_waste",
                 "share of allocated KV slots that hold no token, no model"),
    "paged-attention": ("bench.paged_attention", "main",
                        "one step on the paged KV cache vs a contiguous one"),
    "decode-floor": ("bench.worker_steps", "decode_floor",
                     "batch-1 decode step vs the weight-read floor"),
    "step-profile": ("bench.worker_steps", "step_profile",
                     "where a step's time goes, per attention backend"),
    "efficiency": ("bench.worker_steps", "efficiency",
                   "Loom's wall time vs its forward passes replayed alone"),
    "prefix-cache": ("bench.engine_benches", "prefix_cache",
                     "TTFT of requests sharing a long prefix, cache on and off"),
    "chunked-prefill": ("bench.engine_benches", "chunked_prefill",
                        "streams' inter-token latency while long prompts arrive"),
    "speculative": ("bench.engine_benches", "speculative",
                    "decode tok/s with and without prompt-lookup speculation (SmolLM2)"),
    "remote-worker": ("bench.remote_worker", "main",
                      "a step over loopback gRPC; tensor parallel 2 vs 1 on the CPU"),
    "online": ("bench.servers", "online",
               "a served model's throughput-latency curve (python -m loadtest)"),
    "fairness": ("bench.servers", "fairness",
                 "two tenants, one overloading: fcfs, priority, fair"),
    "router": ("bench.router", "main", "the router's policies over two engine replicas"),
    "reliability": ("bench.reliability", "main",
                    "overload shedding (overload) and SIGTERM drain (drain)"),
    "make-model": ("", "make_model",
                   "write the random-weight llama60m the benchmarks run"),
    "export-hf": ("", "export_hf",
                  "write a Meta checkpoint in Hugging Face's layout"),
}  # fmt: skip
SHARED_MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
DEFAULT_TOKENIZER = SHARED_MODELS / "llama2-tokenizer" / "tokenizer.model"


def make_model(argv: list[str]) -> None:
    """A random-weight Llama in Meta's layout; by default the 60M shape (dim 512, 8 layers,
    8 heads, 4 KV heads, vocab 32000). The Llama 2 tokenizer is copied in when it is beside
    the checkout: it is Meta's file, and bench/models/ is ignored by git."""
    from worker.random_model import LLAMA_60M_PARAMS, random_weights, write_meta_model

    p = argparse.ArgumentParser(prog="python -m bench make-model", description=make_model.__doc__)
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of",
                "max_seq_len"):  # fmt: skip
        p.add_argument("--" + key.replace("_", "-"), type=int, default=LLAMA_60M_PARAMS[key])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER,
                   help="tokenizer.model to copy in when it exists ('' copies none)")  # fmt: skip
    opts = p.parse_args(argv)
    params = {**LLAMA_60M_PARAMS, **{k: getattr(opts, k) for k in LLAMA_60M_PARAMS
                                     if hasattr(opts, k)}}  # fmt: skip
    tokenizer = opts.tokenizer if str(opts.tokenizer) and opts.tokenizer.is_file() else None
    weights = random_weights(params, opts.seed)
    write_meta_model(opts.out, params, weights, tokenizer)
    num_params = sum(w.numel() for w in weights.values()) / 1e6
    copied = f", tokenizer from {tokenizer}" if tokenizer else ", no tokenizer"
    print(f"wrote {opts.out}: {num_params:.1f}M parameters, seed {opts.seed}{copied}")


def export_hf(argv: list[str]) -> None:
    """config.json and model.safetensors (float32) for transformers, wq/wk permuted to HF's
    rotate-half layout."""
    from worker.hf_layout import write_hf_checkpoint

    p = argparse.ArgumentParser(prog="python -m bench export-hf", description=export_hf.__doc__)
    p.add_argument("--model", type=Path, required=True, help="Meta-layout model directory")
    p.add_argument("--out", type=Path, required=True, help="HF directory to write")
    p.add_argument("--max-len", type=int, default=None, help="max_position_embeddings")
    opts = p.parse_args(argv)
    print(write_hf_checkpoint(opts.model, opts.out, opts.max_len))


def usage() -> str:
    width = max(map(len, BENCHMARKS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, _, summary) in BENCHMARKS.items()]
    head = "usage: python -m bench NAME [options]   (NAME --help for its options)"
    return head + "\n\n" + "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in BENCHMARKS:
        print(f"no benchmark called {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, function, _ = BENCHMARKS[argv[0]]
    found = globals() if not module else vars(importlib.import_module(module))
    found[function](argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
