"""Convert a Meta-layout Llama checkpoint to Hugging Face `LlamaForCausalLM` format.

    python -m bench.export_hf --model bench/models/llama60m --out bench/models/llama60m-hf

Writes config.json and model.safetensors (float32). Meta's RoPE rotates interleaved pairs
(dims 2i, 2i+1); HF's rotates halves (dims i, i + head_dim/2), so the rows of wq and wk are
permuted within each head. Needs no transformers install.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.hf_layout import write_hf_checkpoint as export


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="Meta-layout model directory")
    p.add_argument("--out", type=Path, required=True, help="HF directory to write")
    p.add_argument("--max-len", type=int, default=None, help="max_position_embeddings")
    args = p.parse_args()
    print(export(args.model, args.out, args.max_len))


if __name__ == "__main__":
    main()
