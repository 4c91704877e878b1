"""Random-weight Llamas of any shape, in Meta's layout: the benchmarks' 60M model, the tests'
tiny ones, and the device check's 7B shape (drawn on the GPU, never written to a disk); random
LoRA adapters for them, as PEFT files or straight in the worker's layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from worker.model_args import args_from_meta_params, expected_shapes

# About 60M parameters: the benchmarks' `llama60m` (`python -m bench make-model`).
LLAMA_60M_PARAMS: dict[str, Any] = {
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
    """Weights of the shape `params` (a params.json) implies, scaled so activations stay of
    order one through every layer; the same seed gives the same weights. Drawn on `device`:
    a 7B model's 13 GB take a second on a GPU."""
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
    """params.json and consolidated.00.pth in `out_dir`, and a copy of `tokenizer` if given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "params.json").write_text(json.dumps(params, indent=2) + "\n")
    torch.save(weights, out_dir / "consolidated.00.pth")
    if tokenizer is not None:
        shutil.copyfile(tokenizer, out_dir / "tokenizer.model")
    return out_dir


def write_random_lora(
    out_dir: Path, params: dict[str, Any], rank: int, seed: int, alpha: float | None = None
) -> Path:
    """A random LoRA adapter of every projection of the model `params` describes, in PEFT's
    layout (adapter_config.json + adapter_model.safetensors): what the benchmarks serve."""
    from safetensors.torch import save_file

    args = args_from_meta_params(params, int(params["vocab_size"]))
    q_dim, kv_dim = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    shapes = {
        "self_attn.q_proj": (args.dim, q_dim), "self_attn.k_proj": (args.dim, kv_dim),
        "self_attn.v_proj": (args.dim, kv_dim), "self_attn.o_proj": (q_dim, args.dim),
        "mlp.gate_proj": (args.dim, args.hidden_dim), "mlp.up_proj": (args.dim, args.hidden_dim),
        "mlp.down_proj": (args.hidden_dim, args.dim),
    }  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(args.n_layers):
        for module, (in_features, out_features) in shapes.items():
            name = f"base_model.model.model.layers.{layer}.{module}"
            a = torch.randn(rank, in_features, generator=generator) / in_features**0.5
            b = torch.randn(out_features, rank, generator=generator) / rank**0.5 * 0.1
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = a, b
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha or rank, "bias": "none",
        "target_modules": sorted({m.split(".")[1] for m in shapes}),
    }  # fmt: skip
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(out_dir / "adapter_model.safetensors"))
    return out_dir


def random_lora_adapter(
    base: Any,  # modelfiles.lora_files.BaseShapes
    lora_id: int,
    rank: int,
    modules: tuple[str, ...],
    dtype: torch.dtype,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> Any:  # worker.lora_weights.LoraAdapter
    """An adapter of `modules` (among q, k, v, o, gate, up, down) in the layout
    worker/lora_weights.py loads, for the fused projections: the first adapted part of a
    projection at `rank`, the others at half of it (a slice's rank is not always the
    adapter's). Products stay near the size of their inputs whatever the shape."""
    from worker.lora_weights import FUSED_PROJECTIONS, LoraAdapter, LoraPart, LoraProjection

    def randn(*shape: int, scale: float) -> torch.Tensor:
        return (scale * torch.randn(shape, generator=generator)).to(device=device, dtype=dtype)

    layers = []
    for _ in range(base.n_layers):
        adapted = {}
        for projection, names in FUSED_PROJECTIONS.items():
            shrink, parts, out_start, rank_start = [], [], 0, 0
            for module in names:
                in_features, out_features = base.in_out(module)
                if module in modules:
                    width = rank if not parts else max(rank // 2, 1)
                    shrink.append(randn(width, in_features, scale=in_features**-0.5))
                    b = randn(out_features, width, scale=width**-0.5)
                    parts.append(LoraPart(out_start, out_start + out_features, rank_start,
                                          rank_start + width, b))  # fmt: skip
                    rank_start += width
                out_start += out_features
            if parts:
                adapted[projection] = LoraProjection(torch.cat(shrink), parts)
        layers.append(adapted)
    return LoraAdapter(lora_id, f"random{lora_id}", layers)
