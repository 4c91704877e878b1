"""Write a random-weight Llama in Meta's checkpoint layout (params.json + consolidated.00.pth).

    python -m bench.make_random_model --out bench/models/llama60m

The default shape is about 60M parameters (dim 512, 8 layers, 8 heads, 4 KV heads, vocab
32000, multiple_of 32). The same seed gives the same weights. When the Llama 2 tokenizer is
present beside the checkout it is copied in too, so the model can serve text; it is Meta's
file, and bench/models/ is ignored by git, so it never enters the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker.random_model import LLAMA_60M_PARAMS, random_weights, write_meta_model

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.model"


def default_params() -> dict[str, Any]:
    return dict(LLAMA_60M_PARAMS)


def main(argv: list[str] | None = None) -> None:
    defaults = default_params()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory to write")
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of"):
        parser.add_argument("--" + key.replace("_", "-"), type=int, default=defaults[key])
    parser.add_argument("--max-seq-len", type=int, default=defaults["max_seq_len"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=DEFAULT_TOKENIZER,
        help="tokenizer.model to copy in when it exists ('' copies none)",
    )
    opts = parser.parse_args(argv)
    params = {**defaults, **{k: getattr(opts, k) for k in defaults if hasattr(opts, k)}}
    tokenizer = opts.tokenizer if str(opts.tokenizer) and opts.tokenizer.is_file() else None
    weights = random_weights(params, opts.seed)
    write_meta_model(opts.out, params, weights, tokenizer)
    num_params = sum(w.numel() for w in weights.values())
    copied = f", tokenizer from {tokenizer}" if tokenizer else ", no tokenizer"
    print(f"wrote {opts.out}: {num_params / 1e6:.1f}M parameters, seed {opts.seed}{copied}")


if __name__ == "__main__":
    main()
