"""Read a checkpoint into Meta-named tensors: Meta releases (params.json + consolidated.*.pth,
one or many model-parallel shards), Hugging Face Llama directories (config.json +
*.safetensors or *.bin) and GGUF files (worker/gguf_loader.py). Every broken input becomes a
CheckpointError naming file and tensor."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modelfiles.model_source import UnreadableModelError, resolve_model
from worker import hf_layout
from worker.gguf_loader import load_gguf, special_ids
from worker.model_args import (
    ModelArgs,
    args_from_hf_config,
    args_from_meta_params,
    expected_shapes,
)
from worker.packed_weights import LOAD_TIME_TYPES, PackedTensor, quantize_matrices
from worker.torch_file_probe import first_cut_tensor


class CheckpointError(UnreadableModelError):
    """A checkpoint that cannot be loaded; the message names the file (and tensor)."""


@dataclass(slots=True)
class LoadedCheckpoint:
    args: ModelArgs
    # Meta names, on CPU, in the requested dtype, or packed blocks (worker/packed_weights.py)
    weights: dict[str, torch.Tensor | PackedTensor]
    bos_id: int
    eos_id: int


# Model-parallel split dimension of each Meta weight: column-parallel layers are cut along
# their output rows, row-parallel ones along their input columns. Norms are replicated.
_SPLIT_DIM = {
    "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0,
    "wo": 1, "w2": 1, "tok_embeddings": 1,
}  # fmt: skip
_SHARD_RE = re.compile(r"consolidated\.(\d+)\.pth")


def load_checkpoint(
    model: str | Path, dtype: torch.dtype, quantization: str = "none"
) -> LoadedCheckpoint:
    """`model` is what `--model` takes (modelfiles/model_source.py): a directory, a .gguf
    file, or a packaged model's name. `quantization` (worker/packed_weights.py): `none`
    gives float tensors only; `auto` keeps a GGUF's quantized tensors packed; `q8_0` /
    `q4_0` also quantize the float matrices."""
    try:
        source = resolve_model(model)
    except UnreadableModelError as exc:
        raise CheckpointError(str(exc)) from exc
    if source.kind == "meta":
        loaded = _load_meta(source.path)
    elif source.kind == "hf":
        loaded = _load_hf(source.path)
    else:
        loaded = _load_gguf(source.path, packed=quantization != "none")
    if quantization in LOAD_TIME_TYPES:
        loaded.weights = quantize_matrices(loaded.weights, quantization)
    loaded.weights = {
        name: w.to(dtype) if isinstance(w, torch.Tensor) else w
        for name, w in loaded.weights.items()
    }
    return loaded


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read JSON ({exc})") from exc


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: file is missing")
    try:
        # Read into memory rather than mmap: a server must not crash (SIGBUS) when the file
        # is rewritten under it.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a cut or foreign file
        cut = first_cut_tensor(path)
        where = f", tensor {cut} is cut short" if cut else ""
        raise CheckpointError(
            f"{path}: cannot read the checkpoint, the file is truncated or corrupt{where} ({exc})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds {type(state).__name__}, not a dict of tensors")
    return state


def _parse_args(path: Path, parse: Any, *parse_args: Any) -> ModelArgs:
    try:
        return parse(*parse_args)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unusable model parameters ({exc!r})") from exc


def _check_complete(
    weights: dict[str, torch.Tensor], args: ModelArgs, where: dict[str, Path], source: str
) -> None:
    """Every expected tensor present with the right shape, nothing unknown.

    `where` maps a tensor name to the file it came from; `source` names the parameter file.
    """
    expected = expected_shapes(args)
    for name, tensor in weights.items():
        if name not in expected:
            raise CheckpointError(f"{where[name]}: unexpected tensor {name}")
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{where[name]}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"{source} implies {expected[name]}"
            )
    for name in expected:
        if name not in weights:
            raise CheckpointError(f"{sorted(set(where.values()))[0]}: tensor {name} is missing")


# ---- Meta layout -----------------------------------------------------------------------------


def _meta_shard_paths(model_dir: Path) -> list[Path]:
    numbers = sorted(
        int(m.group(1)) for p in model_dir.iterdir() if (m := _SHARD_RE.fullmatch(p.name))
    )
    if not numbers:
        raise CheckpointError(f"{model_dir / 'consolidated.00.pth'}: file is missing")
    # A model-parallel release numbers its shards 00..N-1; a gap means a lost file.
    return [model_dir / f"consolidated.{i:02d}.pth" for i in range(numbers[-1] + 1)]


def _load_meta(model_dir: Path) -> LoadedCheckpoint:
    params_path = model_dir / "params.json"
    params = _read_json(params_path)
    paths = _meta_shard_paths(model_dir)
    shards = [_read_torch_file(path) for path in paths]
    for shard in shards:
        shard.pop("rope.freqs", None)  # recomputed from rope_theta

    vocab_size = int(params.get("vocab_size", -1))
    if vocab_size <= 0:  # Meta writes -1 and sizes the vocabulary from the tokenizer
        if "tok_embeddings.weight" not in shards[0]:
            raise CheckpointError(f"{paths[0]}: tensor tok_embeddings.weight is missing")
        vocab_size = shards[0]["tok_embeddings.weight"].shape[0]
    args = _parse_args(params_path, args_from_meta_params, params, vocab_size)

    weights, where = _merge_meta_shards(paths, shards, args)
    if "output.weight" not in weights:  # tied output: reuse the embedding
        weights["output.weight"] = weights["tok_embeddings.weight"]
        where["output.weight"] = where["tok_embeddings.weight"]
    _check_complete(weights, args, where, "params.json")
    return LoadedCheckpoint(args=args, weights=weights, bos_id=1, eos_id=2)


def _merge_meta_shards(
    paths: list[Path], shards: list[dict[str, torch.Tensor]], args: ModelArgs
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    expected = expected_shapes(args)
    weights: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for name in shards[0]:
        pieces = []
        for path, shard in zip(paths, shards, strict=True):
            if name not in shard:
                raise CheckpointError(f"{path}: tensor {name} is missing (in {paths[0].name})")
            pieces.append(shard[name])
        where[name] = paths[0]
        if len(pieces) == 1 or name not in expected or len(expected[name]) == 1:
            weights[name] = pieces[0]  # a single shard, a replicated norm, or an unknown name
            continue
        dim = _split_dim(name, pieces[0], expected[name])
        for path, piece in zip(paths, pieces, strict=True):
            piece_shape = list(expected[name])
            piece_shape[dim] //= len(pieces)
            if list(piece.shape) != piece_shape:
                raise CheckpointError(
                    f"{path}: tensor {name} has shape {tuple(piece.shape)}, params.json and "
                    f"{len(pieces)} shards imply {tuple(piece_shape)}"
                )
        weights[name] = torch.cat(pieces, dim=dim)
    for path, shard in zip(paths[1:], shards[1:], strict=True):
        for name in shard:
            if name not in weights:
                raise CheckpointError(f"{path}: tensor {name} is missing (in {paths[0].name})")
    return weights, where


def _split_dim(name: str, piece: torch.Tensor, full_shape: tuple[int, ...]) -> int:
    kind = name.split(".")[-2]
    if kind == "tok_embeddings" and piece.shape[1] == full_shape[1]:
        return 0  # Llama 3 splits the vocabulary rather than the embedding width
    return _SPLIT_DIM[kind]


def _load_gguf(path: Path, packed: bool) -> LoadedCheckpoint:
    args, weights, metadata = load_gguf(path, CheckpointError, packed)
    bos_id, eos_id = special_ids(metadata)
    return LoadedCheckpoint(args=args, weights=weights, bos_id=bos_id, eos_id=eos_id)


# ---- Hugging Face layout ---------------------------------------------------------------------


def _load_hf(model_dir: Path) -> LoadedCheckpoint:
    config_path = model_dir / "config.json"
    config = _read_json(config_path)
    args = _parse_args(config_path, args_from_hf_config, config)
    weights: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for path in _hf_weight_paths(model_dir):
        state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch_file(path)
        for hf_name, tensor in state.items():
            if hf_name.endswith(hf_layout.IGNORED_SUFFIXES):
                continue
            name = hf_layout.meta_name(hf_name)
            if name is None:
                raise CheckpointError(f"{path}: unexpected tensor {hf_name}")
            weights[name] = tensor
            where[name] = path
    if "output.weight" not in weights and "tok_embeddings.weight" in weights:
        weights["output.weight"] = weights["tok_embeddings.weight"]  # tie_word_embeddings
        where["output.weight"] = where["tok_embeddings.weight"]
    _check_complete(weights, args, where, "config.json")
    for i in range(args.n_layers):
        for proj, n_heads in (("wq", args.n_heads), ("wk", args.n_kv_heads)):
            name = f"layers.{i}.attention.{proj}.weight"
            weights[name] = hf_layout.rotate_half_to_interleaved(weights[name], n_heads)
    bos_id, eos_id = hf_layout.special_token_ids(config)
    return LoadedCheckpoint(args=args, weights=weights, bos_id=bos_id, eos_id=eos_id)


def _hf_weight_paths(model_dir: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index_path = model_dir / index_name
        if index_path.exists():
            weight_map = _read_json(index_path).get("weight_map", {})
            return [model_dir / name for name in sorted(set(weight_map.values()))]
    paths = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("pytorch_model*.bin"))
    if not paths:
        raise CheckpointError(f"{model_dir / 'model.safetensors'}: file is missing")
    return paths


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.exists():
        raise CheckpointError(f"{path}: file is missing")
    _check_safetensors_length(path)
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the safetensors file ({exc})") from exc


def _check_safetensors_length(path: Path) -> None:
    """Name the first tensor a truncated file cuts off (the header lists every byte range)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        prefix = f.read(8)
        header_len = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if header_len < 0 or 8 + header_len > size:
            raise CheckpointError(f"{path}: the file is truncated inside its header")
        try:
            header = json.loads(f.read(header_len))
        except ValueError as exc:
            raise CheckpointError(f"{path}: the header is not valid JSON ({exc})") from exc
    data_size = size - 8 - header_len
    for name, entry in header.items():
        if name != "__metadata__" and entry["data_offsets"][1] > data_size:
            raise CheckpointError(
                f"{path}: the file is truncated: tensor {name} needs bytes up to "
                f"{entry['data_offsets'][1]} of the data section, which holds {data_size}"
            )
