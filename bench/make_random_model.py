"""Write a random-weight Llama in Meta's checkpoint layout (params.json + consolidated.00.pth).

    python -m bench.make_random_model --out bench/models/llama60m

The default shape is about 60M parameters (dim 512, 8 layers, 8 heads, 4 KV heads, vocab
32000, multiple_of 32). The same seed gives the same weights. When the Llama 2 tokenizer is
present beside the checkout it is copied in too, so the model can serve text; it is Meta's
file, and bench/models/ is ignored by git, so it never enters the repository.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from worker.model_args import args_from_meta_params, expected_shapes

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENIZER = REPO_ROOT.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.model"


def default_params() -> dict[str, Any]:
    return {
        "dim": 512,
        "n_layers": 8,
        "n_heads": 8,
        "n_kv_heads": 4,
        "vocab_size": 32000,
        "multiple_of": 32,
        "ffn_dim_multiplier": None,
        "norm_eps": 1e-5,
        "max_seq_len": 2048,
        "rope_theta": 10000.0,
    }


def random_weights(
    params: dict[str, Any],
    seed: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """Weights scaled so activations stay of order one through every layer. Made where they
    are used: a 7B model's 13 GB are drawn on the GPU in a second, and never touch a disk."""
    generator = torch.Generator(device=device).manual_seed(seed)
    args = args_from_meta_params(params, int(params["vocab_size"]))
    weights = {}
    for name, shape in expected_shapes(args).items():
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        if len(shape) == 1:  # RMSNorm gains near one
            weights[name] = 1.0 + 0.1 * noise
        elif name == "tok_embeddings.weight":
            weights[name] = noise
        else:  # a projection: 1/sqrt(fan_in) keeps each output of order one
            weights[name] = noise / shape[1] ** 0.5
    return weights


def write_meta_model(
    out_dir: Path,
    params: dict[str, Any],
    weights: dict[str, torch.Tensor],
    tokenizer: Path | None = None,
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    torch.save(weights, out_dir / "consolidated.00.pth")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / "tokenizer.model")
    return out_dir


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
