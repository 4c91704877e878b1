"""Model hyper-parameters and how to read them from Meta's params.json, HF's config.json or
a GGUF file's metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_SEQ_LEN = 2048


@dataclass(slots=True, frozen=True)
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int  # width of the SwiGLU MLP
    head_dim: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN


def meta_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """The MLP width exactly as Meta's FeedForward derives it."""
    hidden_dim = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


def args_from_meta_params(params: dict[str, Any], vocab_size: int) -> ModelArgs:
    """`vocab_size` is passed in because Meta's releases write -1 there (sized by the tokenizer)."""
    dim = int(params["dim"])
    n_heads = int(params["n_heads"])
    if params.get("use_scaled_rope") or params.get("rope_scaling"):
        raise ValueError("scaled RoPE (Llama 3.1 style) is not supported")
    return ModelArgs(
        dim=dim,
        n_layers=int(params["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(params.get("n_kv_heads") or n_heads),
        vocab_size=vocab_size,
        hidden_dim=meta_hidden_dim(
            dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")
        ),
        head_dim=dim // n_heads,
        norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_theta=float(params.get("rope_theta", 10000.0)),
        max_seq_len=int(params.get("max_seq_len") or DEFAULT_MAX_SEQ_LEN),
    )


def args_from_hf_config(config: dict[str, Any]) -> ModelArgs:
    if config.get("rope_scaling"):
        raise ValueError("rope_scaling is not supported")
    dim = int(config["hidden_size"])
    n_heads = int(config["num_attention_heads"])
    return ModelArgs(
        dim=dim,
        n_layers=int(config["num_hidden_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(config.get("num_key_value_heads") or n_heads),
        vocab_size=int(config["vocab_size"]),
        hidden_dim=int(config["intermediate_size"]),
        head_dim=int(config.get("head_dim") or dim // n_heads),
        norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=float(config.get("rope_theta", 10000.0)),
        max_seq_len=int(config.get("max_position_embeddings") or DEFAULT_MAX_SEQ_LEN),
    )


def args_from_gguf_metadata(metadata: dict[str, Any], vocab_size: int) -> ModelArgs:
    """`llama.*` keys of a GGUF header; `vocab_size` is passed in because older files leave
    `llama.vocab_size` out (the embedding's rows say it)."""
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"architecture {arch!r} is not supported; Loom runs 'llama'")
    scaling = metadata.get("llama.rope.scaling.type", "none")
    if scaling != "none":
        raise ValueError(f"RoPE scaling {scaling!r} (llama.rope.scaling.type) is not supported")
    dim = int(metadata["llama.embedding_length"])
    n_heads = int(metadata["llama.attention.head_count"])
    head_dim = int(metadata.get("llama.attention.key_length") or dim // n_heads)
    rope_dim = int(metadata.get("llama.rope.dimension_count") or head_dim)
    if rope_dim != head_dim:
        raise ValueError(
            f"partial RoPE (llama.rope.dimension_count {rope_dim} < head dim {head_dim}) "
            "is not supported"
        )
    return ModelArgs(
        dim=dim,
        n_layers=int(metadata["llama.block_count"]),
        n_heads=n_heads,
        n_kv_heads=int(metadata.get("llama.attention.head_count_kv") or n_heads),
        vocab_size=vocab_size,
        hidden_dim=int(metadata["llama.feed_forward_length"]),
        head_dim=head_dim,
        norm_eps=float(metadata.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(metadata.get("llama.rope.freq_base", 10000.0)),
        max_seq_len=int(metadata.get("llama.context_length") or DEFAULT_MAX_SEQ_LEN),
    )


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every weight of the model under Meta's names, with the shape `args` implies."""
    q_dim = args.n_heads * args.head_dim
    kv_dim = args.n_kv_heads * args.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (args.vocab_size, args.dim),
        "norm.weight": (args.dim,),
        "output.weight": (args.vocab_size, args.dim),
    }
    for i in range(args.n_layers):
        p = f"layers.{i}."
        shapes[p + "attention.wq.weight"] = (q_dim, args.dim)
        shapes[p + "attention.wk.weight"] = (kv_dim, args.dim)
        shapes[p + "attention.wv.weight"] = (kv_dim, args.dim)
        shapes[p + "attention.wo.weight"] = (args.dim, q_dim)
        shapes[p + "feed_forward.w1.weight"] = (args.hidden_dim, args.dim)
        shapes[p + "feed_forward.w2.weight"] = (args.dim, args.hidden_dim)
        shapes[p + "feed_forward.w3.weight"] = (args.hidden_dim, args.dim)
        shapes[p + "attention_norm.weight"] = (args.dim,)
        shapes[p + "ffn_norm.weight"] = (args.dim,)
    return shapes
