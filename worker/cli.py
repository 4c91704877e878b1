"""`python -m worker serve`: load a model and serve it to a scheduler over proto/worker.proto.

    python -m worker serve --model DIR --host 0.0.0.0 --port 50061
    python -m frontend serve --worker WORKER_HOST:50061      # on the scheduler host

With --tensor-parallel-size N it starts N - 1 more ranks on this host and serves as rank 0.
Under a launcher (torchrun, a cluster scheduler: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
set) every rank runs this same command: rank 0 serves, the others follow it.

It logs `listening on HOST:PORT` once it serves. SIGTERM or Ctrl-C stops it (exit 0). When the
worker can run no more steps (a tensor-parallel rank failed) it exits 1, so that whatever
supervises it can start it again; the scheduler reconnects by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.flags import add_settings_flags, settings_from_args
from modelfiles.tokenizer_files import tokenizer_files
from worker.config import ENGINE_SIDE_SETTINGS, WorkerServeConfig

log = logging.getLogger("loom.worker.serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model to a scheduler", description=__doc__)
    # Which adapters are served is the engine's choice; a request brings its adapter's path.
    add_settings_flags(serve, WorkerServeConfig, exclude=ENGINE_SIDE_SETTINGS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config: WorkerServeConfig = settings_from_args(
            WorkerServeConfig, args, exclude=ENGINE_SIDE_SETTINGS
        )
    except ValueError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    if not Path(config.model.model).is_dir():
        print(
            f"error: no model directory at {config.model.model}; pass --model DIR", file=sys.stderr
        )
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from worker.parallel import RankFailure, RankInfo
    from worker.tp_launch import check_launched, join

    try:
        launched = RankInfo.from_env()
        if launched is not None:
            check_launched(launched, config.worker)
            parallel = dataclasses.replace(
                config.parallel, tensor_parallel_size=launched.world_size
            )
            config = dataclasses.replace(config, parallel=parallel)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    if launched is not None and launched.rank != 0:
        try:
            join(config.worker, launched)
        except RankFailure as exc:
            log.error("rank %d stops: %s", launched.rank, exc)
            os._exit(1)  # a broken group must not be torn down: that can abort the process
        return 0
    return serve(config)


def serve(config: WorkerServeConfig) -> int:
    from worker import create_worker
    from worker.server import WorkerServer

    # Load and step on one thread (worker/server.py says why).
    step_thread = ThreadPoolExecutor(1, thread_name_prefix="worker-step")
    try:
        worker = step_thread.submit(create_worker, config.worker).result()
    except ValueError as exc:  # e.g. a tensor_parallel_size the model cannot be split by
        log.error("%s", exc)
        return 2
    info = worker.info()
    log.info(
        "loaded %s from %s: vocab %d, max length %d, %s on %s, tensor parallel %d; "
        "KV cache: %d blocks x %d tokens",
        info.model_name,
        config.model.model,
        info.vocab_size,
        info.max_seq_len,
        info.dtype,
        info.device,
        info.tensor_parallel_size,
        info.num_kv_blocks,
        info.block_size,
    )
    files = tokenizer_files(config.model.model)
    if not files:
        log.warning(
            "%s has no tokenizer files to send (neither tokenizer.json nor tokenizer.model; a "
            "GGUF model's vocabulary stays in its header): a scheduler cannot serve text with "
            "this worker",
            config.model.model,
        )
    server = WorkerServer(worker, config.server, files, step_thread)
    try:
        port = server.start()
    except RuntimeError as exc:
        log.error("cannot listen on %s:%d: %s", config.server.host, config.server.port, exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=lambda: (server.fatal.wait(), stop.set()), daemon=True).start()
    log.info(
        "listening on %s:%d (loom.worker.v1.Worker, grpc.health.v1, reflection)",
        config.server.host,
        port,
    )
    stop.wait()
    server.stop(grace=1.0)
    if server.fatal.is_set():
        log.critical("exiting: the worker cannot run steps any more")
        os._exit(1)  # a broken tensor-parallel group must not be torn down
    worker.close()
    log.info("stopped")
    return 0
