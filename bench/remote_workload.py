"""The workloads of bench.bench_remote_worker: greedy decoding fed back step by step, a
prefill chunk, the same on several workers in turn, and the proto conversions alone."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from contract.step import (
    NewRequest,
    RunningRequest,
    SamplingOptions,
    StepInput,
    StepOutput,
    Worker,
)
from contract.step_proto import (
    step_input_from_proto,
    step_input_to_proto,
    step_output_from_proto,
    step_output_to_proto,
)
from loompb import worker_pb2

GREEDY = SamplingOptions(temperature=0.0)
BLOCK_SIZE = 16


class Decoding:
    """B sequences of `context` random tokens, prefilled untimed, then decoded step by step
    with their sampled tokens fed back, as the scheduler does."""

    def __init__(self, worker: Worker, batch: int, context: int, seed: int = 0) -> None:
        self.worker = worker
        vocab = worker.info().vocab_size
        rng = random.Random(seed)
        self.req_ids = [f"s{i}" for i in range(batch)]
        self.lengths = dict.fromkeys(self.req_ids, context)
        self.blocks: dict[str, list[int]] = {}
        self.next_block = 0
        new = []
        for req_id in self.req_ids:
            prompt = [1] + [rng.randrange(3, vocab) for _ in range(context - 1)]
            self.blocks[req_id] = self._blocks(-(-(context + 1) // BLOCK_SIZE))
            new.append(NewRequest(req_id, prompt, list(self.blocks[req_id]), GREEDY))
        out = worker.execute(
            StepInput(new=new, num_scheduled_tokens=dict.fromkeys(self.req_ids, context))
        )
        self.last = dict(zip(out.req_ids, (t[0] for t in out.sampled_token_ids), strict=True))

    def _blocks(self, n: int) -> list[int]:
        self.next_block += n
        return list(range(self.next_block - n, self.next_block))

    def step(self) -> float:
        running = []
        for req_id in self.req_ids:
            self.lengths[req_id] += 1
            grow = -(-(self.lengths[req_id] + 1) // BLOCK_SIZE) - len(self.blocks[req_id])
            new_blocks = self._blocks(grow) if grow > 0 else []
            self.blocks[req_id] += new_blocks
            running.append(RunningRequest(req_id, [self.last[req_id]], new_blocks))
        step = StepInput(running=running, num_scheduled_tokens=dict.fromkeys(self.req_ids, 1))
        start = time.perf_counter()
        out = self.worker.execute(step)
        elapsed = time.perf_counter() - start
        self.last = dict(zip(out.req_ids, (t[0] for t in out.sampled_token_ids), strict=True))
        return elapsed

    def finish(self) -> None:
        self.worker.execute(StepInput(finished_req_ids=list(self.req_ids)))


def paired_decode_times(
    workers: dict[str, Worker], batch: int, context: int, rounds: int, steps: int
) -> dict[str, list[list[float]]]:
    """The same decoding on each worker, in alternating rounds of `steps` steps, so that a
    change of load on the shared cores falls on all of them alike; per worker, per round,
    the step times, the first two of a round left out (another process just ran: this one's
    threads are waking up)."""
    decodings = {name: Decoding(worker, batch, context) for name, worker in workers.items()}
    times: dict[str, list[list[float]]] = {name: [] for name in workers}
    for _ in range(rounds):
        for name, decoding in decodings.items():
            times[name].append([decoding.step() for _ in range(steps + 2)][2:])
    for decoding in decodings.values():
        decoding.finish()
    return times


def overhead_ms(local: list[list[float]], far: list[list[float]]) -> float:
    """The median over rounds of (remote round's median - the embedded one's before it)."""
    pairs = zip(local, far, strict=True)
    return statistics.median(statistics.median(r) - statistics.median(e) for e, r in pairs) * 1000


def flat(rounds: list[list[float]]) -> list[float]:
    return [t for times in rounds for t in times]


def paired_prefill_times(workers: dict[str, Worker], length: int, repeats: int) -> dict:
    prompt = [1] + [random.Random(1).randrange(3, 1000) for _ in range(length - 1)]
    blocks = list(range(-(-(length + 1) // BLOCK_SIZE)))
    times: dict[str, list[float]] = {name: [] for name in workers}
    for i in range(repeats):
        for name, worker in workers.items():
            req_id = f"p{i}"
            new = NewRequest(req_id, prompt, blocks, GREEDY)
            step = StepInput(new=[new], num_scheduled_tokens={req_id: length})
            start = time.perf_counter()
            worker.execute(step)
            times[name].append(time.perf_counter() - start)
            worker.execute(StepInput(finished_req_ids=[req_id]))
    return times


def ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def start_worker_server(model_dir: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    argv = [sys.executable, "-m", "worker", "serve", "--model", str(model_dir), "--port", "0",
            "--device", "cpu", *flags]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    for line in process.stderr:
        if "listening on" in line:
            port = line.split("listening on ")[1].split()[0].rsplit(":", 1)[1]
            return process, f"127.0.0.1:{port}"
    raise RuntimeError("the worker server did not start")


def conversion_ms(batch: int, repeats: int = 200) -> float:
    """What the proto conversions of one decode step of `batch` cost, in this process: the
    StepInput to bytes and back, the StepOutput to bytes and back (both ends' share)."""
    req_ids = [f"default/{uuid.uuid4().hex}" for _ in range(batch)]
    step = StepInput(
        running=[RunningRequest(r, [1234], []) for r in req_ids],
        num_scheduled_tokens=dict.fromkeys(req_ids, 1),
    )
    out = StepOutput(req_ids, [[1234]] * batch, [[]] * batch, [[]] * batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        payload = step_input_to_proto(step).SerializeToString()
        step_input_from_proto(worker_pb2.StepInput.FromString(payload))
        payload = step_output_to_proto(out).SerializeToString()
        step_output_from_proto(worker_pb2.StepOutput.FromString(payload))
        times.append(time.perf_counter() - start)
    return ms(times)


def timed_empty(worker: Worker) -> float:
    start = time.perf_counter()
    worker.execute(StepInput())
    return time.perf_counter() - start
