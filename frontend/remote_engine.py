"""An engine whose worker is a `python -m worker serve` elsewhere (contract/remote_worker.py)."""

from __future__ import annotations

import dataclasses

from contract.remote_worker import RemoteWorker
from modelfiles.remote_tokenizer import tokenizer_from_files
from scheduler.config import EngineConfig
from scheduler.engine import Engine


def remote_engine(
    config: EngineConfig, target: str, timeout: float, startup_timeout: float
) -> Engine:
    """An engine driving the worker at `target`: its model, block size and KV cache come from
    the worker's Info, the tokenizer from the files it sends."""
    if config.scheduler.speculative == "draft":
        raise ValueError(
            "--speculative draft runs the draft model in this process's worker; a remote "
            "worker (--worker) runs none: use --speculative ngram with it"
        )
    worker = RemoteWorker.connect(target, timeout, startup_timeout)
    try:
        tokenizer = tokenizer_from_files(worker.tokenizer_files, target)
    except ValueError:
        worker.close()
        raise
    info = worker.info()
    cache = dataclasses.replace(config.cache, block_size=info.block_size)
    return Engine(worker, tokenizer, dataclasses.replace(config, cache=cache))
