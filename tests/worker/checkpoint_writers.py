"""Write a Meta checkpoint out again as other releases lay it out: Hugging Face's format, or
Meta's model-parallel shards. Written here, independently of worker/loader.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.worker.driver import ModelFiles

_HF_LAYER = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_HF_TOP = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def to_rotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's converter: within each head, the pair (2i, 2i+1) moves to (i, i + head_dim/2)."""
    rows, cols = weight.shape
    half = rows // n_heads // 2
    # [rows, cols] -> [n_heads, half, 2, cols] -> [n_heads, 2, half, cols] -> [rows, cols]
    return weight.reshape(n_heads, half, 2, cols).transpose(1, 2).reshape(rows, cols)


def export_hf(
    files: ModelFiles, out_dir: Path, *, tied: bool = False, safetensors: bool = True
) -> Path:
    params = files.params
    n_heads = params["n_heads"]
    n_kv_heads = params.get("n_kv_heads") or n_heads
    state = {}
    for name, tensor in files.weights.items():
        if name == "output.weight" and tied:
            continue
        if name.endswith("attention.wq.weight"):
            tensor = to_rotate_half(tensor, n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = to_rotate_half(tensor, n_kv_heads)
        if name.startswith("layers."):
            _, layer, rest = name.split(".", 2)
            hf_name = f"model.layers.{layer}.{_HF_LAYER[rest]}"
        else:
            hf_name = _HF_TOP[name]
        state[hf_name] = tensor.contiguous()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": params["dim"],
        "intermediate_size": files.weights["layers.0.feed_forward.w1.weight"].shape[0],
        "num_hidden_layers": params["n_layers"],
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "vocab_size": params["vocab_size"],
        "rms_norm_eps": params["norm_eps"],
        "rope_theta": params.get("rope_theta", 10000.0),
        "max_position_embeddings": params.get("max_seq_len", 2048),
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    if safetensors:
        save_file(state, str(out_dir / "model.safetensors"))
    else:
        torch.save(state, out_dir / "pytorch_model.bin")
    return out_dir


# How Meta's model-parallel layers cut each weight: ColumnParallelLinear along the output
# rows, RowParallelLinear along the input columns, ParallelEmbedding along the embedding width.
_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}
_SHARD_DIM["tok_embeddings"] = 1


def split_meta(files: ModelFiles, out_dir: Path, num_shards: int) -> Path:
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(num_shards)]
    for name, tensor in files.weights.items():
        kind = name.split(".")[-2]
        if kind not in _SHARD_DIM:  # norms are replicated on every shard
            pieces = [tensor.clone() for _ in range(num_shards)]
        else:
            pieces = [p.clone() for p in tensor.chunk(num_shards, dim=_SHARD_DIM[kind])]
        for shard, piece in zip(shards, pieces, strict=True):
            shard[name] = piece
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(files.model_dir / "params.json", out_dir / "params.json")
    for i, shard in enumerate(shards):
        torch.save(shard, out_dir / f"consolidated.{i:02d}.pth")
    return out_dir
