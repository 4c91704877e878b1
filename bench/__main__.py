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
    "accuracy": ("bench.peers", "accuracy",
                 "packed GGUF weights (Loom, llama.cpp) vs the float32 oracle"),
    "scheduler": ("bench.scheduler_benches", "scheduler_overhead",
                  "schedule() + update() per decode step, no model"),
    "deadline-sim": ("bench.scheduler_benches", "deadline_sim",
                     "the deadline policy's goodput under a simulated 2x overload"),
    "kv-waste": ("bench.scheduler_benches", "kv_waste",
                 "share of allocated KV slots that hold no token, no model"),
    "paged-attention": ("bench.kernels", "main",
                        "one step on the paged KV cache vs a contiguous one"),
    "quant-kernels": ("bench.kernels", "quant_kernels",
                      "one projection on packed GGUF blocks, per kernel"),
    "decode-floor": ("bench.worker_steps", "decode_floor",
                     "batch-1 decode step vs the weight-read floor"),
    "step-profile": ("bench.worker_steps", "step_profile",
                     "where a step's time goes, per attention backend"),
    "engine-profile": ("bench.worker_steps", "engine_profile",
                       "one stream's decode step through the engine, profiled"),
    "efficiency": ("bench.worker_steps", "efficiency",
                   "Loom's wall time vs its forward passes replayed alone"),
    "prefix-cache": ("bench.engine_benches", "prefix_cache",
                     "TTFT of requests sharing a long prefix, cache on and off"),
    "chunked-prefill": ("bench.engine_benches", "chunked_prefill",
                        "streams' inter-token latency while long prompts arrive"),
    "lora": ("bench.engine_benches", "lora",
             "throughput with 1, 4, 16 LoRA adapters mixed vs the base model"),
    "speculative": ("bench.engine_benches", "speculative",
                    "decode tok/s with and without prompt-lookup speculation (SmolLM2)"),
    "remote-worker": ("bench.remote_worker", "main",
                      "a step over loopback gRPC; tensor parallel 2 vs 1 on the CPU"),
    "online": ("bench.servers", "online",
               "a served model's throughput-latency curve (python -m loadtest)"),
    "fairness": ("bench.servers", "fairness",
                 "tenants under pressure: overload with deadlines, a flood, the quantum"),
    "router": ("bench.router", "main", "the router's policies over two engine replicas"),
    "structured": ("bench.engine_benches", "structured",
                   "JSON-schema constrained requests vs unconstrained, llama.cpp (--server)"),
    "reliability": ("bench.reliability", "main",
                    "overload shedding (overload) and SIGTERM drain (drain)"),
    "make-model": ("", "make_model",
                   "write the random-weight llama60m the benchmarks run"),
    "export-hf": ("", "export_hf",
                  "write a Meta checkpoint in Hugging Face's layout"),
    "make-7b-gguf": ("", "make_7b_gguf",
                     "write a Llama-2-7B-shaped Q4_0 GGUF of random blocks"),
}  # fmt: skip
SEVEN_B_GGUF = Path(__file__).resolve().parent / "models" / "llama7b-q4_0.gguf"
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


def make_7b_gguf(argv: list[str]) -> None:
    """Llama-2-7B's shapes, every matrix Q4_0 of random blocks (3.6 GiB), for start-up,
    memory and one-stream speed against llama.cpp on a model of that size."""
    p = argparse.ArgumentParser(
        prog="python -m bench make-7b-gguf", description=make_7b_gguf.__doc__
    )
    p.add_argument("--out", type=Path, default=SEVEN_B_GGUF, help="the file to write")
    opts = p.parse_args(argv)
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    write_7b(opts.out)
    print(f"wrote {opts.out}: {opts.out.stat().st_size / 2**30:.2f} GiB")


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
