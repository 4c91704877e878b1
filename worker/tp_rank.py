"""The ranks of a tensor-parallel worker.

Rank 0 is the worker the scheduler talks to (`TensorParallelWorker`, the Worker protocol of
contract/step.py): it receives each StepInput, sends it to the other ranks, runs its own slice
of the forward pass with them, and alone samples, from the logits gathered on it. The other
ranks (`follow`) apply the same StepInput to the same per-request state, so their batches
match rank 0's, and run their slices; the tokens rank 0 samples reach them in the next
StepInput, as they reach any worker.

While the scheduler is idle, rank 0 sends a ping every quarter of `distributed_timeout`, so
that a waiting rank never mistakes a quiet scheduler for a dead rank 0. A failed collective
(a rank died or hangs past the timeout) or any other failure inside a step leaves the ranks
out of step: the worker turns unavailable for good (`available` False, `failed` set), the
step raises RankFailure, and every later step too.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import torch

from contract.step import StepInput, StepOutput, WorkerInfo
from worker.config import WorkerConfig
from worker.loader import LoadedCheckpoint
from worker.model import Transformer
from worker.model_args import ModelArgs
from worker.parallel import RankFailure, RankGroup
from worker.runner import ModelRunner
from worker.step_batch import RequestState, StepBatch
from worker.step_check import StepRejected
from worker.tp_loader import load_rank_checkpoint
from worker.tp_model import TensorParallelTransformer, rank_args

log = logging.getLogger("loom.worker.tp")


def rank_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """A rank's device: on CUDA, the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda:") and world_size > 1:
        raise ValueError(
            f"device {name!r} names one GPU; with tensor_parallel_size {world_size}, pass "
            "device cuda (rank r uses the host's GPU number LOCAL_RANK) or auto"
        )
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


class RankPlacement:
    """worker/placement.py's Placement for one rank of `group`."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group
        self.world_size = group.world_size
        self._vocab_size = 0

    def device(self, name: str) -> torch.device:
        return self.group.device

    def load(
        self, model_dir: str | Path, dtype: torch.dtype, quantization: str = "none"
    ) -> LoadedCheckpoint:
        # A rank's slice is cut from float tensors: tensor parallel serves them unpacked.
        loaded = load_rank_checkpoint(model_dir, dtype, self.group)
        self._vocab_size = loaded.args.vocab_size
        return loaded

    def local_args(self, args: ModelArgs) -> ModelArgs:
        return rank_args(args, self.world_size)

    def build_model(
        self, args: ModelArgs, weights: dict[str, torch.Tensor], device: torch.device, kernels: bool
    ) -> Transformer:
        return TensorParallelTransformer.from_weights(
            args, weights, device, kernels=kernels, group=self.group, vocab_size=self._vocab_size
        )

    def agree_num_blocks(self, num_blocks: int) -> int:
        return self.group.min_on_load(num_blocks)


class FollowerRunner(ModelRunner):
    """A rank other than 0: the same state and forward pass, no sampling."""

    def sample(
        self, scheduled: list[tuple[RequestState, int]], batch: StepBatch, logits: object
    ) -> StepOutput:
        return StepOutput()


def follow(config: WorkerConfig, group: RankGroup) -> None:
    """Run rank `group.rank`'s part of every step rank 0 sends, until it says stop. Raises
    RankFailure when the group breaks."""
    runner = FollowerRunner(config, RankPlacement(group))
    log.info("rank %d of %d ready", group.rank, group.world_size)
    while True:
        kind, step = group.receive()
        if kind == "stop":
            return
        if kind == "step":
            follow_step(runner, step, group.rank)


def follow_step(runner: ModelRunner, step: StepInput, rank: int) -> None:
    """One step on a rank other than 0. A step refused is refused by rank 0 alike, before any
    collective; any other failure leaves this rank out of step with the others, so it ends
    the rank with a RankFailure that says which rank failed and how (rank 0's next collective
    then fails too, and the worker turns unavailable)."""
    try:
        runner.execute(step)
    except StepRejected:
        log.warning("rank %d: step refused", rank, exc_info=True)
    except RankFailure:
        raise
    except Exception as exc:
        log.critical("rank %d: step failed; leaving the group", rank, exc_info=True)
        raise RankFailure(f"tensor-parallel rank {rank}: step failed: {exc!r}") from exc


class TensorParallelWorker:
    """Rank 0: the Worker the engine or the worker server drives."""

    def __init__(
        self,
        config: WorkerConfig,
        group: RankGroup,
        processes: list[subprocess.Popen] | None = None,
    ) -> None:
        self.group = group
        self.processes = processes or []  # the ranks this process started, if any
        self.runner = ModelRunner(config, RankPlacement(group))
        self.session_epoch = 0  # the state is never lost and kept: a broken group stays broken
        self.failed = threading.Event()
        self.failure: str | None = None
        self._lock = threading.Lock()  # one message or step on the group at a time
        self._last_sent = time.monotonic()
        self._closed = False
        self._ping_interval = config.parallel.distributed_timeout / 4
        threading.Thread(target=self._ping, name="tp-ping", daemon=True).start()

    @property
    def requests(self) -> dict[str, RequestState]:
        return self.runner.requests

    @property
    def available(self) -> bool:
        return self.failure is None

    def info(self) -> WorkerInfo:
        return self.runner.info()

    def execute(self, step: StepInput) -> StepOutput:
        with self._lock:
            if self.failure is not None:
                raise RankFailure(f"the tensor-parallel group has failed: {self.failure}")
            try:
                self.group.send(("step", step))
                return self.runner.execute(step)
            except StepRejected:
                raise  # refused by every rank alike, before any collective
            except RankFailure as exc:
                self._fail(exc)
                raise
            except Exception as exc:  # the ranks may be out of step now
                self._fail(exc)
                raise RankFailure(f"tensor-parallel step failed on rank 0: {exc!r}") from exc
            finally:
                self._last_sent = time.monotonic()

    def _fail(self, exc: BaseException) -> None:
        self.failure = str(exc)
        log.critical("tensor-parallel group failed: %s", exc)
        self.failed.set()

    def _ping(self) -> None:
        while not self._closed and self.failure is None:
            time.sleep(max(0.0, self._last_sent + self._ping_interval - time.monotonic()))
            if not self._lock.acquire(timeout=self._ping_interval):
                continue  # a step holds the group: that keeps the ranks awake
            try:
                due = time.monotonic() - self._last_sent >= self._ping_interval
                if due and not self._closed and self.failure is None:
                    self.group.send(("ping", None))
                    self._last_sent = time.monotonic()
            except RankFailure as exc:
                self._fail(exc)
            finally:
                self._lock.release()

    def close(self, timeout: float = 10.0) -> None:
        """Tell the other ranks to stop and wait for the ones this process started (after a
        failure they are ended at once: they can do nothing more)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.failure is None:
                try:
                    self.group.send(("stop", None))
                except RankFailure as exc:
                    log.warning("stopping the other ranks: %s", exc)
                    self.failure = str(exc)
        deadline = time.monotonic() + (timeout if self.failure is None else 0.0)
        for process in self.processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.group.close()
