"""One tensor-parallel rank's weights, read from the checkpoint, never the whole model.

Each rank wants, of every weight, the slice worker/tp_model.py runs: rows of its heads for
wq/wk/wv, of its MLP slice for w1/w3, the matching columns of wo/w2, its vocabulary rows of
tok_embeddings and output (padded up to a multiple of N), the norms whole.

- Meta checkpoints: N model-parallel shards (`consolidated.00.pth` ...) are exactly those
  slices, so with N ranks rank r reads shard r and nothing else. With S shards and N ranks
  otherwise it reads the shards that cover its slice (S/N of them when N divides S, the one
  it shares with N/S - 1 other ranks when S divides N) and cuts its slice out of them. Llama
  2's shards split the embedding by width, not by vocabulary: the ranks exchange their width
  slices once, at load, and each keeps its vocabulary rows.
- Hugging Face checkpoints are cut at load (worker/tp_hf_loader.py).

Errors are CheckpointErrors naming the file and tensor, as worker/loader.py's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from worker.loader import (  # the single-process loader's checks, shared
    CheckpointError,
    LoadedCheckpoint,
    _check_complete,
    _meta_shard_paths,
    _parse_args,
    _read_json,
    _read_torch_file,
    _split_dim,
)
from worker.model_args import ModelArgs, args_from_meta_params, expected_shapes
from worker.parallel import RankGroup
from worker.tp_model import check_tensor_parallel_size, rank_args, rows_per_rank

# The dimension a rank's slice is cut along (Megatron's layout); norms are whole.
RANK_DIM = {
    "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1,
    "output": 0, "tok_embeddings": 0,
}  # fmt: skip
VOCAB_WEIGHTS = ("output", "tok_embeddings")

log = logging.getLogger("loom.worker.tp")


def load_rank_checkpoint(
    model_dir: str | Path, dtype: torch.dtype, group: RankGroup
) -> LoadedCheckpoint:
    """`args` of the whole model; `weights` this rank's slices, in `dtype`."""
    model_dir = Path(model_dir)
    if (model_dir / "params.json").exists():
        loaded = _load_meta(model_dir, group)
    elif (model_dir / "config.json").exists():
        from worker.tp_hf_loader import load_hf_rank

        loaded = load_hf_rank(model_dir, group)
    else:
        raise CheckpointError(
            f"{model_dir}: neither params.json (Meta layout) nor config.json "
            "(Hugging Face layout) is there"
        )
    loaded.weights = {name: w.to(dtype) for name, w in loaded.weights.items()}
    return loaded


def shards_of_rank(num_shards: int, world_size: int, rank: int) -> list[int]:
    """Which of Meta's shards hold rank `rank`'s slices."""
    if num_shards % world_size == 0:
        per_rank = num_shards // world_size
        return list(range(rank * per_rank, (rank + 1) * per_rank))
    if world_size % num_shards == 0:
        return [rank * num_shards // world_size]
    return list(range(num_shards))


def rank_range(size: int, rank: int, world_size: int, vocab: bool) -> tuple[int, int, int]:
    """(start, stop, length): the rank's part of a dimension of `size`. A vocabulary is cut
    in padded parts, so the last ranks' may run short (length says how long they are)."""
    if vocab:
        length = rows_per_rank(size, world_size)
        start = rank * length
        return min(start, size), min(start + length, size), length
    return rank * size // world_size, (rank + 1) * size // world_size, size // world_size


def padded(tensor: torch.Tensor, dim: int, length: int) -> torch.Tensor:
    missing = length - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


# ---- Meta layout -----------------------------------------------------------------------------


def _load_meta(model_dir: Path, group: RankGroup) -> LoadedCheckpoint:
    params_path = model_dir / "params.json"
    params = _read_json(params_path)
    rank, world_size = group.rank, group.world_size
    paths = _meta_shard_paths(model_dir)
    indices = shards_of_rank(len(paths), world_size, rank)
    # Refuse an N the model cannot be split by before reading any shard.
    shape = _parse_args(params_path, args_from_meta_params, params, 1)
    check_tensor_parallel_size(shape, world_size)
    log.info("rank %d reads %s", rank, ", ".join(paths[i].name for i in indices))
    shards = {i: _read_torch_file(paths[i]) for i in indices}
    for shard in shards.values():
        shard.pop("rope.freqs", None)  # recomputed from rope_theta
    first = shards[indices[0]]
    vocab_size = int(params.get("vocab_size", -1))
    if vocab_size <= 0:  # Meta writes -1 and sizes the vocabulary from the tokenizer
        if "tok_embeddings.weight" not in first:
            raise CheckpointError(f"{paths[indices[0]]}: tensor tok_embeddings.weight is missing")
        vocab_size = first["tok_embeddings.weight"].shape[0]
    args = _parse_args(params_path, args_from_meta_params, params, vocab_size)
    expected = expected_shapes(args)
    weights: dict[str, torch.Tensor] = {}
    where: dict[str, Path] = {}
    for name in first:
        pieces = []
        for i in indices:
            if name not in shards[i]:
                raise CheckpointError(
                    f"{paths[i]}: tensor {name} is missing (in {paths[indices[0]].name})"
                )
            pieces.append(shards[i][name])
        where[name] = paths[indices[0]]
        if name not in expected:
            raise CheckpointError(f"{paths[indices[0]]}: unexpected tensor {name}")
        weights[name] = _meta_rank_slice(name, pieces, expected[name], paths, indices, group)
    for i in indices[1:]:
        for name in shards[i]:
            if name not in weights:
                raise CheckpointError(
                    f"{paths[i]}: tensor {name} is missing (in {paths[indices[0]].name})"
                )
    if "output.weight" not in weights:  # tied output: the embedding rows this rank holds
        weights["output.weight"] = weights["tok_embeddings.weight"]
        where["output.weight"] = where["tok_embeddings.weight"]
    _check_rank_complete(weights, args, world_size, where, "params.json")
    return LoadedCheckpoint(args=args, weights=weights, bos_id=1, eos_id=2)


def _meta_rank_slice(
    name: str,
    pieces: list[torch.Tensor],
    full_shape: tuple[int, ...],
    paths: list[Path],
    indices: list[int],
    group: RankGroup,
) -> torch.Tensor:
    num_shards = len(paths)
    if len(full_shape) == 1:  # a norm: whole on every shard
        if tuple(pieces[0].shape) != full_shape:
            raise CheckpointError(
                f"{paths[indices[0]]}: tensor {name} has shape {tuple(pieces[0].shape)}, "
                f"params.json implies {full_shape}"
            )
        return pieces[0]
    shard_dim = _split_dim(name, pieces[0], full_shape) if num_shards > 1 else 0
    piece_shape = list(full_shape)
    piece_shape[shard_dim] //= num_shards
    for i, piece in zip(indices, pieces, strict=True):
        if list(piece.shape) != piece_shape:
            raise CheckpointError(
                f"{paths[i]}: tensor {name} has shape {tuple(piece.shape)}, params.json and "
                f"{num_shards} shards imply {tuple(piece_shape)}"
            )
    held = torch.cat(pieces, dim=shard_dim) if len(pieces) > 1 else pieces[0]
    offset = indices[0] * piece_shape[shard_dim]  # where `held` starts in the whole tensor
    kind = name.split(".")[-2]
    rank_dim = RANK_DIM[kind]
    if num_shards == 1 or shard_dim == rank_dim:
        return _cut(
            held, rank_dim, offset, full_shape[rank_dim], kind in VOCAB_WEIGHTS, group, name
        )
    # Llama 2's embedding is split by width: gather the width, keep the vocabulary rows.
    width = _cut(held, shard_dim, offset, full_shape[shard_dim], False, group, name)
    whole = torch.cat(group.all_gather_on_load(width), dim=shard_dim)
    return _cut(whole, rank_dim, 0, full_shape[rank_dim], True, group, name)


def _cut(
    held: torch.Tensor,
    dim: int,
    offset: int,
    size: int,
    vocab: bool,
    group: RankGroup,
    name: str,
) -> torch.Tensor:
    """The rank's part of `held`, which is [offset, offset + len) of a dimension of `size`;
    a copy, so the shard it came from can be freed."""
    start, stop, length = rank_range(size, group.rank, group.world_size, vocab)
    if start < offset or stop > offset + held.shape[dim]:
        raise CheckpointError(
            f"{name}: rank {group.rank}'s rows {start}..{stop} are not in the shards it read "
            f"({offset}..{offset + held.shape[dim]}); use a tensor_parallel_size the shard "
            "count divides or that divides it"
        )
    return padded(held.narrow(dim, start - offset, stop - start).clone(), dim, length)


def _check_rank_complete(
    weights: dict[str, torch.Tensor],
    args: ModelArgs,
    world_size: int,
    where: dict[str, Path],
    source: str,
) -> None:
    _check_complete(
        weights, rank_args(args, world_size), where, f"{source} split {world_size} ways"
    )
