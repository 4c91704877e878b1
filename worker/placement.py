"""Where a runner's model lives: whole on one device (the default), or one tensor-parallel
rank's slice of it (worker/tp_rank.py's RankPlacement). ModelRunner asks its placement for
the device, the weights, the model and the KV cache size, and is otherwise the same."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from worker.loader import LoadedCheckpoint, load_checkpoint
from worker.model import Transformer
from worker.model_args import ModelArgs


class Placement(Protocol):
    world_size: int  # ranks the model is split over

    def device(self, name: str) -> torch.device:
        """The device a `--device` name means for this process."""

    def load(
        self, model_dir: str | Path, dtype: torch.dtype, quantization: str = "none"
    ) -> LoadedCheckpoint:
        """`args` of the whole model; `weights` those this process holds. `quantization`
        as worker/loader.py takes it (a placement may hold floats whatever it says)."""

    def local_args(self, args: ModelArgs) -> ModelArgs:
        """The shape of what this process holds (heads, MLP width, vocabulary rows)."""

    def build_model(
        self, args: ModelArgs, weights: dict[str, torch.Tensor], device: torch.device, kernels: bool
    ) -> Transformer:
        """The model over `local_args`; `weights` is consumed."""

    def agree_num_blocks(self, num_blocks: int) -> int:
        """The KV cache size every process can hold (block ids are shared)."""


def resolve_device(name: str) -> torch.device:
    """ "auto" is the GPU when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class SingleDevice:
    """The whole model in this process."""

    world_size = 1

    def device(self, name: str) -> torch.device:
        return resolve_device(name)

    def load(
        self, model_dir: str | Path, dtype: torch.dtype, quantization: str = "none"
    ) -> LoadedCheckpoint:
        return load_checkpoint(model_dir, dtype, quantization)

    def local_args(self, args: ModelArgs) -> ModelArgs:
        return args

    def build_model(
        self, args: ModelArgs, weights: dict[str, torch.Tensor], device: torch.device, kernels: bool
    ) -> Transformer:
        return Transformer.from_weights(args, weights, device, kernels=kernels)

    def agree_num_blocks(self, num_blocks: int) -> int:
        return num_blocks
