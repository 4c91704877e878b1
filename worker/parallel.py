"""The tensor-parallel process group: ranks from the standard launcher environment, the
collectives the sharded model runs, and rank 0's messages to the other ranks.

Ranks find each other through `MASTER_ADDR`, `MASTER_PORT`, `RANK`, `WORLD_SIZE` and
`LOCAL_RANK`, as torchrun and cluster schedulers set them, so the same code runs on one host
or across several. When nothing launched them, rank 0 starts the other ranks itself
(worker/tp_launch.py) on a store port the OS picks.

Two groups: `steps`, whose every operation gives up after `distributed_timeout` seconds (a
rank that died or hangs fails the step instead of stalling it; gloo on CPU, NCCL for CUDA
tensors), and `loading`, for the collectives of the model load, which may wait as long as a
large checkpoint takes to read. A collective that fails raises RankFailure: the group is
then unusable, and only a restart of every rank brings it back.
"""

from __future__ import annotations

import datetime
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# Reading a big checkpoint from slow storage can take this long on one rank.
LOAD_TIMEOUT = datetime.timedelta(minutes=30)
LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")
# Each rank sets this on the store before the rendezvous: a rank 0 that started the others
# waits for it while watching them exit (worker/tp_launch.py).
STARTED_KEY = "loom/rank-started/{}"


class RankFailure(RuntimeError):
    """A collective failed or timed out: some rank is gone, and the group with it."""


@dataclass(slots=True, frozen=True)
class RankInfo:
    rank: int
    world_size: int
    local_rank: int  # which of this host's devices the rank uses

    @classmethod
    def from_env(cls) -> RankInfo | None:
        """The rank a launcher gave this process, or None when none did (no WORLD_SIZE)."""
        if "WORLD_SIZE" not in os.environ:
            return None
        missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE is set, so this is a launched rank, but {', '.join(missing)} "
                "are not: set MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE (torchrun does)"
            )
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK must be in [0, WORLD_SIZE={world_size}), got {rank}")
        return cls(rank, world_size, int(os.environ.get("LOCAL_RANK", rank)))


class RankGroup:
    """This process's membership of the tensor-parallel group."""

    def __init__(
        self, info: RankInfo, device: torch.device, timeout: float, store: Any = None
    ) -> None:
        self.info = info
        self.rank, self.world_size = info.rank, info.world_size
        self.device = device
        backend = "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"
        if store is None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                info.world_size,
                is_master=info.rank == 0,
                timeout=LOAD_TIMEOUT,
                wait_for_workers=False,
            )
            store.set(STARTED_KEY.format(info.rank), "1")
        # The rendezvous waits for every rank to start, so it gets the long timeout; the
        # step group is made with the short one.
        dist.init_process_group(
            backend,
            init_method=None if store is not None else "env://",
            store=store,
            rank=info.rank,
            world_size=info.world_size,
            timeout=LOAD_TIMEOUT,
        )
        self.loading = dist.new_group(backend="gloo", timeout=LOAD_TIMEOUT)
        self.steps = dist.new_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))

    # ---- the step's collectives (on self.device) ------------------------------------------

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place."""
        try:
            dist.all_reduce(tensor, group=self.steps)
        except RuntimeError as exc:
            raise RankFailure(f"tensor-parallel all-reduce failed: {exc}") from exc
        return tensor

    def gather_to_first(self, tensor: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's `tensor` (same shape everywhere) on rank 0, in rank order; None on
        the other ranks."""
        parts = (
            [torch.empty_like(tensor) for _ in range(self.world_size)] if not self.rank else None
        )
        try:
            dist.gather(tensor, parts, dst=0, group=self.steps)
        except RuntimeError as exc:
            raise RankFailure(f"tensor-parallel gather failed: {exc}") from exc
        return parts

    # ---- rank 0's messages (pickled, on the CPU) -------------------------------------------

    def send(self, message: Any) -> None:
        """Rank 0: hand every other rank `message` (they call `receive`)."""
        payload = torch.frombuffer(bytearray(pickle.dumps(message)), dtype=torch.uint8)
        self._broadcast(torch.tensor([payload.numel()], dtype=torch.int64))
        self._broadcast(payload)

    def receive(self) -> Any:
        """The other ranks: the next message rank 0 sent."""
        size = torch.empty(1, dtype=torch.int64)
        self._broadcast(size)
        payload = torch.empty(int(size), dtype=torch.uint8)
        self._broadcast(payload)
        return pickle.loads(payload.numpy().tobytes())

    def _broadcast(self, tensor: torch.Tensor) -> None:
        try:
            dist.broadcast(tensor, src=0, group=self.steps)
        except RuntimeError as exc:
            raise RankFailure(f"tensor-parallel broadcast failed: {exc}") from exc

    # ---- loading -------------------------------------------------------------------------

    def all_gather_on_load(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's CPU `tensor` (same shape everywhere), in rank order."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        try:
            dist.all_gather(parts, tensor.contiguous(), group=self.loading)
        except RuntimeError as exc:
            raise RankFailure(f"a rank failed while the model loaded: {exc}") from exc
        return parts

    def min_on_load(self, value: int) -> int:
        """The smallest of every rank's `value`."""
        tensor = torch.tensor([value], dtype=torch.int64)
        try:
            dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=self.loading)
        except RuntimeError as exc:
            raise RankFailure(f"a rank failed while the model loaded: {exc}") from exc
        return int(tensor)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
