"""Read a GGUF checkpoint (llama.cpp, Ollama, LM Studio) into Meta-named float tensors.

The header's `llama.*` keys give the hyper-parameters; each tensor is renamed from GGUF's
names (`blk.N.attn_q.weight`) to Meta's (`layers.N.attention.wq.weight`). GGUF keeps wq/wk
in Meta's row order: llama.cpp's converter undoes Hugging Face's rotate-half permutation,
because its RoPE for `llama` rotates adjacent pairs as Meta's does; so they load unchanged.
F32, F16 and BF16 tensors are taken as they are. Quantized ones either stay packed, as
views of the file's memory map (worker/packed_weights.py), or are dequantized
(worker/gguf_dequant.py) and then cast with the rest to the serving dtype.
"""

from __future__ import annotations

import ctypes
import mmap
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelfiles.gguf_file import GGUFFile, GGUFTensor, read_gguf
from modelfiles.model_source import UnreadableModelError
from worker.gguf_dequant import BLOCK_SHAPES, SUPPORTED_TYPES, dequantize
from worker.memory_check import allocation_guard
from worker.model_args import ModelArgs, args_from_gguf_metadata, expected_shapes
from worker.packed_weights import PackedTensor, for_kernels

_TOP_NAMES = {
    "token_embd.weight": "tok_embeddings.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "output.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "attention_norm.weight",
    "attn_q.weight": "attention.wq.weight",
    "attn_k.weight": "attention.wk.weight",
    "attn_v.weight": "attention.wv.weight",
    "attn_output.weight": "attention.wo.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "ffn_gate.weight": "feed_forward.w1.weight",
    "ffn_down.weight": "feed_forward.w2.weight",
    "ffn_up.weight": "feed_forward.w3.weight",
}
_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_LIBC = ctypes.CDLL(None, use_errno=True)
_MADV_DONTNEED = mmap.MADV_DONTNEED


def meta_name(gguf_name: str) -> str | None:
    """Meta's name for a GGUF llama tensor, or None when it is not one."""
    if gguf_name in _TOP_NAMES:
        return _TOP_NAMES[gguf_name]
    match = _LAYER_RE.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}"
    return None


def special_ids(metadata: dict[str, Any]) -> tuple[int, int]:
    """(BOS, EOS) from the header, with Llama's 1 and 2 when it names none."""
    bos = metadata.get("tokenizer.ggml.bos_token_id", 1)
    eos = metadata.get("tokenizer.ggml.eos_token_id", 2)
    return int(bos), int(eos)


def load_gguf(
    path: Path, error: type[Exception], packed: bool = False
) -> tuple[ModelArgs, dict[str, torch.Tensor | PackedTensor], dict[str, Any]]:
    """Hyper-parameters, Meta-named weights and the header's metadata; `error` is raised,
    naming the file and tensor, for anything Loom cannot read. Float tensors come as float32;
    quantized ones as PackedTensors over the file's memory map when `packed`, else
    dequantized to float32."""
    try:
        gguf = read_gguf(path)
        metadata = gguf.metadata()
    except UnreadableModelError as exc:
        raise error(str(exc)) from exc
    tensors = gguf.tensors
    if "rope_freqs.weight" in tensors:
        raise error(f"{path}: Llama 3.1-style scaled RoPE (rope_freqs.weight) is not supported")
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise error(f"{path}: tensor token_embd.weight is missing")
    vocab_size = int(metadata.get("llama.vocab_size") or embedding.shape[0])
    try:
        args = args_from_gguf_metadata(metadata, vocab_size)
    except (KeyError, TypeError, ValueError) as exc:
        raise error(f"{path}: unusable model parameters ({exc})") from exc
    weights: dict[str, torch.Tensor] = {}
    for gguf_name, tensor in tensors.items():
        name = meta_name(gguf_name)
        if name is None:
            raise error(f"{path}: unexpected tensor {gguf_name}")
        weights[name] = _read_tensor(gguf, tensor, error, packed)
    if "output.weight" not in weights:  # tied output: the embedding serves as the LM head
        weights["output.weight"] = weights["tok_embeddings.weight"]
    _check_shapes(path, weights, args, error)
    return args, weights, metadata


def _read_tensor(
    gguf: GGUFFile, tensor: GGUFTensor, error: type[Exception], packed: bool
) -> torch.Tensor | PackedTensor:
    path, name, type_name = gguf.path, tensor.name, tensor.type_name
    if type_name not in SUPPORTED_TYPES:
        raise error(
            f"{path}: tensor {name} is stored as {type_name}, which Loom does not read "
            f"(it reads {', '.join(SUPPORTED_TYPES)})"
        )
    shape = list(tensor.shape)  # [rows, row length], as Meta's
    rows, row_length = int(np.prod(shape[:-1])), shape[-1]
    raw = gguf.tensor_bytes(tensor)
    if type_name in BLOCK_SHAPES and row_length % BLOCK_SHAPES[type_name][0]:
        raise error(
            f"{path}: tensor {name} has rows of {row_length} values, not whole {type_name} "
            f"blocks of {BLOCK_SHAPES[type_name][0]}"
        )
    expected = _row_bytes(type_name, row_length) * rows
    if raw.size != expected:
        raise error(
            f"{path}: tensor {name} holds {raw.size} bytes; {type_name} {tuple(shape)} needs "
            f"{expected} (the file is corrupt)"
        )
    if packed and type_name in BLOCK_SHAPES:
        # A view of the read-only memory map: the blocks are read where they lie, and pages
        # the kernels never touch are never read from disk. (numpy marks the map read-only;
        # nothing writes to it.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(raw.reshape(rows, -1))
        packed_tensor = for_kernels(PackedTensor(data, type_name, (rows, row_length)))
        if packed_tensor.data is not data:  # regrouped into new memory
            _release_map_pages(raw)
        return packed_tensor
    with allocation_guard(f"{path}: tensor {name}", rows * row_length * 4, error):
        # A copy in memory, not a view of the map: the float tensors are cast and re-laid.
        raw_copy = torch.from_numpy(np.array(raw).reshape(rows, -1))
        values = dequantize(raw_copy, type_name, row_length)
    return values.reshape(shape)


def _release_map_pages(view: np.ndarray) -> None:
    """Drop the memory map's pages under `view` from this process (MADV_DONTNEED; read from
    the file again if ever touched), so a regrouped copy and the bytes it came from are not
    both resident while a model loads."""
    page = mmap.PAGESIZE
    start = view.ctypes.data
    first, last = -(-start // page) * page, (start + view.nbytes) // page * page
    if last > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _row_bytes(type_name: str, row_length: int) -> int:
    if type_name in BLOCK_SHAPES:
        values, nbytes = BLOCK_SHAPES[type_name]
        return row_length // values * nbytes
    return row_length * (4 if type_name == "F32" else 2)


def _check_shapes(
    path: Path, weights: dict[str, torch.Tensor], args: ModelArgs, error: type[Exception]
) -> None:
    expected = expected_shapes(args)
    for name, shape in expected.items():
        if name not in weights:
            raise error(f"{path}: tensor {name} is missing")
        if tuple(weights[name].shape) != shape:
            raise error(
                f"{path}: tensor {name} has shape {tuple(weights[name].shape)}, "
                f"the header implies {shape}"
            )
