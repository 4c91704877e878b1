"""One tensor-parallel rank's weights from a Hugging Face Llama directory, cut at load: of
safetensors files only the rank's rows or columns are read (the headers give every shape
first), of .bin files, memory-mapped, only its slices are copied. wq/wk get HF's rotary
permutation undone per head of the slice (the permutation stays within a head). The slices
are worker/tp_loader.py's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from worker import hf_layout
from worker.loader import (  # the single-process loader's checks, shared
    CheckpointError,
    LoadedCheckpoint,
    _check_complete,
    _check_safetensors_length,
    _hf_weight_paths,
    _parse_args,
    _read_json,
)
from worker.model_args import args_from_hf_config
from worker.parallel import RankGroup
from worker.tp_loader import RANK_DIM, VOCAB_WEIGHTS, padded, rank_range
from worker.tp_model import check_tensor_parallel_size


def load_hf_rank(model_dir: Path, group: RankGroup) -> LoadedCheckpoint:
    config_path = model_dir / "config.json"
    config = _read_json(config_path)
    args = _parse_args(config_path, args_from_hf_config, config)
    check_tensor_parallel_size(args, group.world_size)
    sources = _HfTensors(model_dir)
    if "output.weight" not in sources.shapes and "tok_embeddings.weight" in sources.shapes:
        sources.alias("output.weight", "tok_embeddings.weight")  # tie_word_embeddings
    shapes = {name: torch.empty(shape, device="meta") for name, shape in sources.shapes.items()}
    _check_complete(shapes, args, sources.where, "config.json")  # names and whole shapes
    local_heads = {
        "wq": args.n_heads // group.world_size,
        "wk": args.n_kv_heads // group.world_size,
    }
    weights = {}
    for name, shape in sources.shapes.items():
        kind = name.split(".")[-2]
        if len(shape) == 1:
            weights[name] = sources.read(name)
            continue
        dim = RANK_DIM[kind]
        start, stop, length = rank_range(
            shape[dim], group.rank, group.world_size, kind in VOCAB_WEIGHTS
        )
        tensor = padded(sources.read(name, dim, start, stop), dim, length)
        if kind in local_heads:
            tensor = hf_layout.rotate_half_to_interleaved(tensor, local_heads[kind])
        weights[name] = tensor
    bos_id, eos_id = hf_layout.special_token_ids(config)
    return LoadedCheckpoint(args=args, weights=weights, bos_id=bos_id, eos_id=eos_id)


class _HfTensors:
    """The checkpoint's tensors under Meta's names, read in slices: safetensors by their
    headers (nothing else is read until a slice is asked for), .bin files memory-mapped."""

    def __init__(self, model_dir: Path) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.where: dict[str, Path] = {}
        self._sources: dict[str, tuple[Any, str]] = {}  # name -> (open file, its HF name)
        for path in _hf_weight_paths(model_dir):
            for hf_name, (handle, shape) in self._open(path).items():
                if hf_name.endswith(hf_layout.IGNORED_SUFFIXES):
                    continue
                name = hf_layout.meta_name(hf_name)
                if name is None:
                    raise CheckpointError(f"{path}: unexpected tensor {hf_name}")
                self.shapes[name] = shape
                self.where[name] = path
                self._sources[name] = (handle, hf_name)

    def alias(self, name: str, of: str) -> None:
        self.shapes[name], self.where[name] = self.shapes[of], self.where[of]
        self._sources[name] = self._sources[of]

    @staticmethod
    def _open(path: Path) -> dict[str, tuple[Any, tuple[int, ...]]]:
        if not path.exists():
            raise CheckpointError(f"{path}: file is missing")
        if path.suffix != ".safetensors":
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as exc:
                raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
            return {name: (state, tuple(t.shape)) for name, t in state.items()}
        from safetensors import safe_open

        _check_safetensors_length(path)
        handle = safe_open(str(path), framework="pt")
        names = handle.keys()  # a safetensors handle is no mapping
        return {name: (handle, tuple(handle.get_slice(name).get_shape())) for name in names}

    def read(
        self, name: str, dim: int = 0, start: int = 0, stop: int | None = None
    ) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of the tensor; the whole one when
        stop is None."""
        handle, hf_name = self._sources[name]
        if isinstance(handle, dict):  # a memory-mapped .bin: copy out the slice
            tensor = handle[hf_name]
            return (
                tensor.clone() if stop is None else tensor.narrow(dim, start, stop - start).clone()
            )
        if stop is None:
            return handle.get_tensor(hf_name)
        part = handle.get_slice(hf_name)
        return part[start:stop] if dim == 0 else part[:, start:stop]
