"""Write GGUF files for the tests with the `gguf` package, the way llama.cpp's converter lays
them out, independently of worker/gguf_loader.py: stories260K's weights, its SentencePiece
vocabulary (or a BPE one), and optionally quantized tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
from gguf import GGMLQuantizationType, GGUFWriter, quants

from tests.worker.checkpoint_writers import to_rotate_half
from tests.worker.driver import ModelFiles

_LAYER = {
    "attention_norm.weight": "attn_norm.weight",
    "attention.wq.weight": "attn_q.weight",
    "attention.wk.weight": "attn_k.weight",
    "attention.wv.weight": "attn_v.weight",
    "attention.wo.weight": "attn_output.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "feed_forward.w1.weight": "ffn_gate.weight",
    "feed_forward.w2.weight": "ffn_down.weight",
    "feed_forward.w3.weight": "ffn_up.weight",
}
_TOP = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}


def gguf_name(meta_name: str) -> str:
    if meta_name in _TOP:
        return _TOP[meta_name]
    _, layer, rest = meta_name.split(".", 2)
    return f"blk.{layer}.{_LAYER[rest]}"


def llama_cpp_permute(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's converter on HF's rotate-half q/k rows: back to adjacent pairs."""
    rows, cols = weight.shape
    return weight.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


@dataclass
class GGUFOptions:
    # Meta name -> GGML type; tensors not named stay F32. `quantize_all` applies a type to
    # every 2-D tensor whose rows it can block.
    types: dict[str, GGMLQuantizationType] = field(default_factory=dict)
    quantize_all: GGMLQuantizationType | None = None
    # Meta name -> (blocks [rows, bytes] uint8, their type): written as they are (the K types,
    # which the gguf package cannot quantize).
    raw_blocks: dict[str, tuple[np.ndarray, GGMLQuantizationType]] = field(default_factory=dict)
    tied: bool = False  # leave output.weight out, as tied models do
    architecture: str = "llama"
    chat_template: str | None = None
    eot_token_id: int | None = None
    extra_kv: Callable[[GGUFWriter], None] | None = None
    vocabulary: Callable[[GGUFWriter], None] | None = None  # default: stories' SentencePiece


def sentencepiece_vocabulary(model_file: Path) -> Callable[[GGUFWriter], None]:
    """tokenizer.ggml.* from a SentencePiece model, as llama.cpp's converter writes them."""

    def write(writer: GGUFWriter) -> None:
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
        pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
        types = []
        for i in range(sp.vocab_size()):
            kind = 1  # normal
            if sp.is_unknown(i):
                kind = 2
            elif sp.is_control(i):
                kind = 3
            elif sp.is_byte(i):
                kind = 6
            elif sp.is_unused(i):
                kind = 5
            types.append(kind)
        writer.add_tokenizer_model("llama")
        writer.add_token_list(pieces)
        writer.add_token_scores([sp.get_score(i) for i in range(sp.vocab_size())])
        writer.add_token_types(types)
        writer.add_bos_token_id(sp.bos_id())
        writer.add_eos_token_id(sp.eos_id())
        writer.add_unk_token_id(sp.unk_id())
        writer.add_add_bos_token(True)

    return write


def _tensor_data(name: str, tensor: torch.Tensor, options: GGUFOptions) -> tuple:
    if name in options.raw_blocks:
        return options.raw_blocks[name]
    array = tensor.float().numpy()
    qtype = options.types.get(name)
    if qtype is None and options.quantize_all is not None and array.ndim == 2:
        block = quants.GGML_QUANT_SIZES[options.quantize_all][0]
        qtype = options.quantize_all if array.shape[-1] % block == 0 else None
    if qtype is None or qtype == GGMLQuantizationType.F32:
        return array, None
    if qtype == GGMLQuantizationType.F16:
        return array.astype(np.float16), None
    return quants.quantize(array, qtype), qtype


def write_stories_gguf(files: ModelFiles, path: Path, options: GGUFOptions | None = None) -> Path:
    options = options or GGUFOptions()
    params = files.params
    n_heads, n_kv_heads = params["n_heads"], params.get("n_kv_heads") or params["n_heads"]
    writer = GGUFWriter(str(path), options.architecture)
    writer.add_block_count(params["n_layers"])
    writer.add_context_length(params.get("max_seq_len", 2048))
    writer.add_embedding_length(params["dim"])
    writer.add_feed_forward_length(files.weights["layers.0.feed_forward.w1.weight"].shape[0])
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_freq_base(params.get("rope_theta", 10000.0))
    writer.add_rope_dimension_count(params["dim"] // n_heads)
    writer.add_layer_norm_rms_eps(params["norm_eps"])
    writer.add_vocab_size(params["vocab_size"])
    (options.vocabulary or sentencepiece_vocabulary(files.model_dir / "tokenizer.model"))(writer)
    if options.chat_template is not None:
        writer.add_chat_template(options.chat_template)
    if options.eot_token_id is not None:
        writer.add_eot_token_id(options.eot_token_id)
    if options.extra_kv is not None:
        options.extra_kv(writer)
    for name, tensor in files.weights.items():
        if name == "output.weight" and options.tied:
            continue
        if name.endswith("attention.wq.weight") or name.endswith("attention.wk.weight"):
            heads = n_heads if "wq" in name else n_kv_heads
            # Meta -> HF's rotate-half order -> llama.cpp's order, as a real conversion runs.
            tensor = llama_cpp_permute(to_rotate_half(tensor, heads), heads)
        data, qtype = _tensor_data(name, tensor, options)
        writer.add_tensor(gguf_name(name), data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
