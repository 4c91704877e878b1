"""Starting the ranks of a tensor-parallel worker.

Launched: a launcher (torchrun, a cluster scheduler) started every rank with MASTER_ADDR,
MASTER_PORT, RANK and WORLD_SIZE set; each runs `python -m worker serve`, rank 0 serves and
the others follow it (`join`).

Not launched: rank 0 starts the other N - 1 ranks on this host (`start_tensor_parallel`):
each is `python -m worker serve` with the same settings and the launcher variables, on a
store port the OS picked, so nothing needs a free port agreed in advance. A rank that exits
before the group forms fails the start at once, naming it; the started ranks end when rank 0
closes the worker, and by themselves when rank 0 dies (their next collective fails).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from common.flags import settings_to_argv
from worker.config import WorkerConfig, WorkerServeConfig
from worker.loader import CheckpointError, _parse_args, _read_json
from worker.model_args import ModelArgs, args_from_hf_config, args_from_meta_params
from worker.parallel import LOAD_TIMEOUT, STARTED_KEY, RankGroup, RankInfo
from worker.tp_model import check_tensor_parallel_size
from worker.tp_rank import TensorParallelWorker, follow, rank_device

log = logging.getLogger("loom.worker.tp")


def start_tensor_parallel(config: WorkerConfig) -> TensorParallelWorker:
    """Rank 0 of `tensor_parallel_size` ranks: of a launched group when the launcher
    variables say so, else with the other ranks started here."""
    world_size = config.parallel.tensor_parallel_size
    launched = RankInfo.from_env()
    if launched is not None:
        check_launched(launched, config)
        if launched.rank != 0:
            raise ValueError(f"this process is rank {launched.rank}: only rank 0 takes steps")
        return TensorParallelWorker(config, _group(launched, config))
    _check_size_early(config)
    store = dist.TCPStore(
        "127.0.0.1", 0, world_size, is_master=True, timeout=LOAD_TIMEOUT, wait_for_workers=False
    )
    processes = [_start_rank(config, rank, store.port) for rank in range(1, world_size)]
    group = None
    try:
        _wait_started(store, processes)
        group = _group(RankInfo(0, world_size, 0), config, store)
        return TensorParallelWorker(config, group, processes)
    except BaseException:
        for process in processes:
            process.kill()
            process.wait()
        if group is not None:  # so that this process can form another group later
            group.close()
        raise


def join(config: WorkerConfig, info: RankInfo) -> None:
    """A launched rank other than 0: follow rank 0 until it stops (RankFailure when the group
    breaks)."""
    check_launched(info, config)
    group = _group(info, config)
    follow(config, group)
    group.close()


def check_launched(info: RankInfo, config: WorkerConfig) -> None:
    size = config.parallel.tensor_parallel_size
    if size not in (1, info.world_size):
        raise ValueError(
            f"tensor_parallel_size is {size} but the launcher started WORLD_SIZE="
            f"{info.world_size} ranks; give the same number, or leave tensor_parallel_size out"
        )


def _group(info: RankInfo, config: WorkerConfig, store: object = None) -> RankGroup:
    device = rank_device(config.model.device, info.local_rank, info.world_size)
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Ranks on one host share its cores: without this each would take all of them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return RankGroup(info, device, config.parallel.distributed_timeout, store)


def _check_size_early(config: WorkerConfig) -> None:
    """Refuse an N the model cannot be split by before starting any process."""
    check_tensor_parallel_size(
        model_shape(config.model.model), config.parallel.tensor_parallel_size
    )


def model_shape(model_dir: str) -> ModelArgs:
    """The hyper-parameters from params.json or config.json, without reading weights (the
    vocabulary size may be a placeholder)."""
    path = os.path.join(model_dir, "params.json")
    if os.path.exists(path):
        return _parse_args(path, args_from_meta_params, _read_json(Path(path)), 1)
    path = os.path.join(model_dir, "config.json")
    if os.path.exists(path):
        return _parse_args(path, args_from_hf_config, _read_json(Path(path)))
    raise CheckpointError(f"{model_dir}: neither params.json nor config.json is there")


def _start_rank(config: WorkerConfig, rank: int, port: int) -> subprocess.Popen:
    settings = WorkerServeConfig(model=config.model, cache=config.cache, parallel=config.parallel)
    argv = [
        sys.executable,
        "-m",
        "worker",
        "serve",
        *settings_to_argv(settings),
    ]
    world_size = config.parallel.tensor_parallel_size
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    log.info("started tensor-parallel rank %d of %d (pid %d)", rank, world_size, process.pid)
    return process


def _wait_started(store: dist.TCPStore, processes: list[subprocess.Popen]) -> None:
    """Until every started rank has reached the store; a rank that exits first ends this."""
    keys = [STARTED_KEY.format(rank) for rank in range(1, len(processes) + 1)]
    deadline = time.monotonic() + LOAD_TIMEOUT.total_seconds()
    while not store.check(keys):
        for rank, process in enumerate(processes, start=1):
            if process.poll() is not None:
                raise RuntimeError(
                    f"tensor-parallel rank {rank} exited with status {process.returncode} "
                    "before the group formed (its error is in the log above)"
                )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tensor-parallel ranks did not start within {LOAD_TIMEOUT}")
        time.sleep(0.05)  # other processes starting: nothing to wait on but the store
