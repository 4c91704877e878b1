"""`python -m worker serve --tensor-parallel-size 2`: rank 0 serves, the rank it started
follows; a scheduler driving it gets the embedded engine's output. When a rank dies the step
fails with UNAVAILABLE naming the failure, and the worker exits 1 to be restarted. Under
torchrun every rank runs the same command, and rank 0 serves."""

from __future__ import annotations

import os
import re
import signal
import sys

from frontend.remote_engine import remote_engine
from scheduler import Engine, EngineConfig, SamplingParams
from tests.conftest import STORIES_DIR
from tests.remote.conftest import start_worker
from tests.server.conftest import wait_until
from tests.server.serve_process import ServeProcess

RANK_STARTED = re.compile(r"started tensor-parallel rank 1 of 2 \(pid (\d+)\)")


def test_a_two_rank_worker_serves_a_scheduler_and_exits_when_a_rank_dies() -> None:
    worker = start_worker("--tensor-parallel-size", "2", "--distributed-timeout", "3")
    try:
        engine = remote_engine(EngineConfig(), worker.target, 30.0, 60.0)
        assert engine.info.tensor_parallel_size == 2
        embedded = Engine.from_model_dir(STORIES_DIR, device="cpu")
        params = SamplingParams(max_tokens=24, temperature=0, logprobs=True)
        [got] = engine.generate("Once upon a time", params)
        [want] = embedded.generate("Once upon a time", params)
        assert got.token_ids == want.token_ids
        assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs, strict=True)) < 1e-4

        [pid] = [int(m.group(1)) for line in worker.lines if (m := RANK_STARTED.search(line))]
        os.kill(pid, signal.SIGKILL)
        [failed] = engine.generate("Once upon a time", params)
        assert failed.finish_reason == "error" and "the worker is unavailable" in failed.error
        assert worker.proc.wait(timeout=30) == 1
        log = worker.log()
        assert re.search(r"the worker cannot run steps any more: tensor-parallel \w+ failed", log)
        assert "exiting: the worker cannot run steps any more" in log
        wait_until(lambda: not engine.worker_available, 10, "the scheduler sees it gone")
        engine.close()
    finally:
        worker.stop()


def test_under_torchrun_every_rank_runs_worker_serve_and_rank_0_serves() -> None:
    # --standalone: torchrun's own store on a free port, the launcher variables for each rank.
    launcher = ServeProcess(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "worker", "serve", "--device", "cpu", "--port", "0", "--num-kv-blocks", "64"]
    )  # fmt: skip
    try:
        engine = remote_engine(EngineConfig(), launcher.target, 30.0, 60.0)
        assert engine.info.tensor_parallel_size == 2
        params = SamplingParams(max_tokens=16, temperature=0)
        [got] = engine.generate("Once upon a time", params)
        [want] = Engine.from_model_dir(STORIES_DIR, device="cpu").generate(
            "Once upon a time", params
        )
        assert got.token_ids == want.token_ids
        engine.close()
        launcher.proc.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
        launcher.proc.wait(timeout=30)
        assert "loom.worker.serve: stopped" in launcher.log()
    finally:
        launcher.stop()
