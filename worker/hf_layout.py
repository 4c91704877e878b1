"""Hugging Face Llama names and rotary layout, translated to Meta's and back; and a Meta
checkpoint written out in Hugging Face's layout (what transformers reads beside Loom in the
benchmarks)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

_LAYER_NAMES = {
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Buffers some exports carry that the model recomputes.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def meta_name(hf_name: str) -> str | None:
    """Meta's name for an HF weight, or None when the name is not a Llama weight."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    match = _LAYER_RE.fullmatch(hf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def hf_name(meta_weight_name: str) -> str:
    """HF's name for a Meta weight (the inverse of `meta_name`)."""
    for hf, meta in _TOP_NAMES.items():
        if meta == meta_weight_name:
            return hf
    _, index, rest = meta_weight_name.split(".", 2)  # layers.N.rest
    hf_rest = next(hf for hf, meta in _LAYER_NAMES.items() if meta == rest)
    return f"model.layers.{index}.{hf_rest}"


def interleaved_to_rotate_half(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The permutation HF's converter applies to wq/wk: within each head, Meta's row pair
    (2i, 2i+1) moves to (i, i + head_dim/2). Head dim 4: Meta rows [0,1,2,3] -> [0,2,1,3]."""
    rows, cols = weight.shape
    head_dim = rows // n_heads
    # [n_heads, head_dim/2, 2, cols] -> [n_heads, 2, head_dim/2, cols] -> [rows, cols]
    return weight.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def rotate_half_to_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo the row permutation HF's converter applies to wq/wk.

    Within each head, Meta pairs rows (2i, 2i+1) as one complex number; HF moves them to
    (i, i + head_dim/2) so RoPE can rotate halves. Head dim 4: HF rows [0,2,1,3] -> [0,1,2,3].
    """
    rows, cols = weight.shape
    head_dim = rows // n_heads
    # [n_heads, 2, head_dim/2, cols] -> [n_heads, head_dim/2, 2, cols] -> [rows, cols]
    return weight.view(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def special_token_ids(config: dict) -> tuple[int, int]:
    """(BOS, EOS) from config.json; the first EOS where it lists several (the tokenizer brings
    the rest), Llama's 1 and 2 where it names none."""
    eos = config.get("eos_token_id", 2)
    return int(config.get("bos_token_id", 1)), int(eos[0] if isinstance(eos, list) else eos)


def hf_config(params: dict, weights: dict[str, torch.Tensor], max_len: int) -> dict:
    """config.json of `LlamaForCausalLM` for a Meta checkpoint (params.json and weights)."""
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


def write_hf_checkpoint(model_dir: Path, out_dir: Path, max_len: int | None = None) -> Path:
    """A one-file Meta checkpoint as config.json and model.safetensors (float32), wq and wk
    permuted to HF's rotate-half layout; tokenizer.model copied when there is one."""
    from safetensors.torch import save_file

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
