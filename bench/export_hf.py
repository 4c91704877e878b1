"""Convert a Meta-layout Llama checkpoint to Hugging Face `LlamaForCausalLM` format.

    python -m bench.export_hf --model bench/models/llama60m --out bench/models/llama60m-hf

Writes config.json and model.safetensors (float32). Meta's RoPE rotates interleaved pairs
(dims 2i, 2i+1); HF's rotates halves (dims i, i + head_dim/2), so the rows of wq and wk are
permuted within each head. Needs no transformers install.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from worker.hf_layout import hf_name, interleaved_to_rotate_half


def hf_config(params: dict, weights: dict[str, torch.Tensor], max_len: int) -> dict:
    vocab_size, dim = weights["tok_embeddings.weight"].shape
    n_heads = int(params["n_heads"])
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(dim),
        "intermediate_size": int(weights["layers.0.feed_forward.w1.weight"].shape[0]),
        "num_hidden_layers": int(params["n_layers"]),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(params.get("n_kv_heads") or n_heads),
        "head_dim": int(dim) // n_heads,
        "vocab_size": int(vocab_size),
        "max_position_embeddings": max_len,
        "rms_norm_eps": float(params.get("norm_eps", 1e-5)),
        "rope_theta": float(params.get("rope_theta", 10000.0)),
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def export(model_dir: Path, out_dir: Path, max_len: int | None = None) -> Path:
    params = json.loads((model_dir / "params.json").read_text())
    shards = sorted(model_dir.glob("consolidated.*.pth"))
    if len(shards) != 1:
        raise ValueError(f"{model_dir}: expected one consolidated.*.pth, found {len(shards)}")
    weights = torch.load(shards[0], map_location="cpu", weights_only=True)
    n_heads = int(params["n_heads"])
    n_kv_heads = int(params.get("n_kv_heads") or n_heads)
    hf: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name.endswith("attention.wq.weight"):
            tensor = interleaved_to_rotate_half(tensor, n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = interleaved_to_rotate_half(tensor, n_kv_heads)
        hf[hf_name(name)] = tensor.float().contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    config = hf_config(params, weights, max_len or int(params.get("max_seq_len") or 2048))
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(hf, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if (model_dir / "tokenizer.model").exists():
        shutil.copy(model_dir / "tokenizer.model", out_dir / "tokenizer.model")
    return out_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="Meta-layout model directory")
    p.add_argument("--out", type=Path, required=True, help="HF directory to write")
    p.add_argument("--max-len", type=int, default=None, help="max_position_embeddings")
    args = p.parse_args()
    print(export(args.model, args.out, args.max_len))


if __name__ == "__main__":
    main()
