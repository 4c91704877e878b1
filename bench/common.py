"""What the benchmarks share: the machine's description and BENCHMARKS.md sections; greedy
sampling declared once; random-token workloads; Loom's engine run offline; matmul FLOPs."""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import re
import shlex
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from contract.sampling import SamplingParams
from contract.step import StepInput, StepOutput, Worker, WorkerInfo
from scheduler import Engine
from scheduler.engine import EngineConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
DEFAULT_MODEL_DIR = REPO_ROOT / "bench" / "models" / "llama60m"
STORIES_DIR = REPO_ROOT / "models" / "stories260K"

# ---- greedy sampling, the one place the benchmarks build sampling parameters -------------

# For benchmarks that drive a worker directly (its steps carry each request's parameters).
GREEDY = SamplingParams(temperature=0.0)


def greedy_params(max_tokens: int, ignore_eos: bool = True) -> SamplingParams:
    """Greedy, `max_tokens` tokens: exactly that many, unless EOS may end it first."""
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos)


# ---- the machine and BENCHMARKS.md -------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_isa() -> str:
    """The vector extensions the kernels may choose among, as /proc/cpuinfo (lscpu) names them."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return "/".join(f for f in ISA_FLAGS if f in flags) or "no AVX2"
    except OSError:
        pass
    return "ISA unknown"


def machine_description(device: str) -> str:
    """One line for BENCHMARKS.md: what ran the numbers."""
    on_gpu = device.startswith("cuda") and torch.cuda.is_available()
    accel = f"GPU {torch.cuda.get_device_name(0)}" if on_gpu else "no GPU"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{os.cpu_count()}-core CPU ({cpu_model()}; {cpu_isa()}), {mem_gib:.0f} GiB, {accel}; "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )


class _LoadSampler:
    """Samples the 1-minute load average every few seconds while a benchmark runs: above the
    core count, other processes were sharing the cores with the measurement."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.samples = [os.getloadavg()[0]]
        self._every_s = every_s
        threading.Thread(target=self._run, name="load-sampler", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self._every_s)
            self.samples.append(os.getloadavg()[0])


_LOAD = _LoadSampler()


def load_average() -> str:
    samples = _LOAD.samples
    return (
        f"{samples[0]:.2f} at the start, {max(samples):.2f} at most, {samples[-1]:.2f} at the "
        f"end (1-minute averages on {os.cpu_count()} cores)"
    )


def command_line() -> str:
    """The command as BENCHMARKS.md records it: `python -m bench NAME ...`."""
    return " ".join(["python -m bench", *map(shlex.quote, sys.argv[1:])])


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of `fn()` and its result (CUDA work is waited for)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:,.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_header(device: str) -> str:
    return (
        f"- Command: `{command_line()}`\n"
        f"- Machine: {machine_description(device)}\n"
        f"- Date: {today()}; load: {load_average()}\n"
    )


def publish(title: str, body: str, write: bool) -> None:
    """Print a section, and with `write` put it into BENCHMARKS.md."""
    print(body)
    if write:
        write_section(title, body)


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the `## title` section of BENCHMARKS.md (or append it), leaving every other
    section as it is. The file is read just before it is written: others edit it too."""
    heading = f"## {title}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{heading}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


def bench_parser(name: str, description: str) -> argparse.ArgumentParser:
    """The options parser of `python -m bench NAME`."""
    return argparse.ArgumentParser(
        prog=f"python -m bench {name}", description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def doc_paragraph(doc: str, name: str) -> str:
    """The paragraph of a module docstring that begins `name: `, without that label: one
    module's account of each of its benchmarks, quoted in the BENCHMARKS.md section."""
    [found] = [part for part in doc.split("\n\n") if part.startswith(f"{name}: ")]
    return found.removeprefix(f"{name}: ").strip()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- workloads ---------------------------------------------------------------------------

# SentencePiece Llama vocabularies put <unk>, <s>, </s> at 0, 1, 2; prompts avoid them.
FIRST_ORDINARY_ID = 3


@dataclass(slots=True)
class Workload:
    prompts: list[list[int]]
    max_tokens: list[int]  # each request generates exactly this many (EOS ignored)

    @property
    def num_prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def num_output_tokens(self) -> int:
        return sum(self.max_tokens)

    def head(self, num: int) -> Workload:
        return Workload(self.prompts[:num], self.max_tokens[:num])


def random_tokens(
    rng: np.random.Generator, vocab_size: int, num: int, first_id: int = FIRST_ORDINARY_ID
) -> list[int]:
    return rng.integers(first_id, vocab_size, size=num).tolist()


def uniform_workload(
    num_requests: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    vocab_size: int,
    seed: int,
    first_id: int = FIRST_ORDINARY_ID,
) -> Workload:
    """Random token-id prompts; prompt and output lengths uniform over the inclusive ranges."""
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(prompt_range[0], prompt_range[1] + 1, size=num_requests)
    output_lens = rng.integers(output_range[0], output_range[1] + 1, size=num_requests)
    prompts = [random_tokens(rng, vocab_size, int(n), first_id) for n in prompt_lens]
    return Workload(prompts, output_lens.tolist())


# ---- Loom's engine, offline --------------------------------------------------------------


@dataclass
class RecordingWorker:
    """Passes every step to the real worker and keeps, per step, how many tokens it computed
    and the seconds it took; with `keep_steps`, a copy of the step too (to replay it)."""

    inner: Worker
    keep_steps: bool = False
    steps: list[StepInput] = field(default_factory=list)
    times: list[tuple[int, float]] = field(default_factory=list)  # (tokens, seconds)

    @property
    def available(self) -> bool:
        return self.inner.available

    @property
    def session_epoch(self) -> int:
        return self.inner.session_epoch

    def info(self) -> WorkerInfo:
        return self.inner.info()

    def close(self) -> None:
        self.inner.close()

    def execute(self, step: StepInput) -> StepOutput:
        if self.keep_steps:  # a copy: the scheduler may reuse lists it handed over
            self.steps.append(copy.deepcopy(step))
        start = time.perf_counter()
        out = self.inner.execute(step)
        self.times.append((sum(step.num_scheduled_tokens.values()), time.perf_counter() - start))
        return out

    @property
    def execute_seconds(self) -> float:
        return sum(seconds for _, seconds in self.times)

    def clear(self) -> None:
        self.steps.clear()
        self.times.clear()


def build_engine(
    model: str | Path, device: str = "cpu", keep_steps: bool = False, **settings: Any
) -> tuple[Engine, RecordingWorker]:
    """An engine over the in-process worker, wrapped in a RecordingWorker. `settings`:
    EngineConfig fields by name, as `Engine.from_model_dir` takes them."""
    from modelfiles.tokenizer import Tokenizer
    from worker import create_worker

    config = EngineConfig.from_kwargs(model=str(model), device=device, **settings)
    recorder = RecordingWorker(create_worker(config.worker), keep_steps)
    return Engine(recorder, Tokenizer.from_model_dir(model), config), recorder


def teacher_forced_logits(worker, token_ids: list[int], chunk: int) -> torch.Tensor:
    """Logits [len(token_ids), vocab] of an in-process worker's model prefilling token_ids in
    steps of `chunk` tokens, into blocks 0.. of its cache (nothing else may be running)."""
    from worker.step_batch import RequestState

    every_row = SamplingParams(temperature=0.0, echo=True)  # echo: logits at every position
    block_size = worker.info().block_size
    blocks = list(range(-(-len(token_ids) // block_size)))
    state = RequestState("probe", list(token_ids), blocks, every_row, num_computed=0,
                         num_prompt_tokens=len(token_ids))  # fmt: skip
    parts = []
    while state.num_computed < len(token_ids):
        n = min(chunk, len(token_ids) - state.num_computed)
        batch = worker.build_batch([(state, n)])
        hidden = worker.model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
        parts.append(worker.model.compute_logits(hidden, batch.logits_rows))
        state.num_computed += n
    return torch.cat(parts)


def warm_up(engine: Engine) -> None:
    """One short request first, so one-time costs (allocations, kernel selection) are not
    timed."""
    engine.generate([[5, 6, 7, 8]], greedy_params(4))


def run_workload(
    engine: Engine, workload: Workload, loras: list[str | None] | None = None
) -> tuple[float, list[list[int]]]:
    """Wall seconds to run the whole workload, and each request's output token ids; `loras`:
    each request's LoRA adapter (None: the base model)."""
    params = [greedy_params(n) for n in workload.max_tokens]
    start = time.perf_counter()
    outputs = engine.generate(workload.prompts, params, loras)
    wall = time.perf_counter() - start
    token_ids = [out.token_ids for out in outputs]
    for out, n in zip(token_ids, workload.max_tokens, strict=True):
        if len(out) != n:
            raise RuntimeError(f"a request asked for {n} tokens and got {len(out)}")
    return wall, token_ids


# ---- matmul FLOPs and the compute floor --------------------------------------------------


class Shape(Protocol):
    """A model's hyper-parameters, as WorkerInfo and ModelArgs both carry them."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int


def linear_flops_per_token(shape: Shape) -> int:
    """Projections and MLP of every layer, for one token (2 FLOPs per multiply-add)."""
    q_dim, kv_dim = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    per_layer = shape.dim * (q_dim + 2 * kv_dim) + q_dim * shape.dim
    per_layer += 3 * shape.dim * shape.hidden_dim
    return 2 * shape.n_layers * per_layer


def attention_flops(shape: Shape, num_context: int) -> int:
    """Q.K and P.V of one token that sees `num_context` keys, over every layer."""
    return 2 * 2 * shape.n_layers * shape.n_heads * shape.head_dim * num_context


def request_flops(shape: Shape, prompt_len: int, output_len: int) -> int:
    """Every token but the last output goes through the layers once (its K/V computed once,
    seeing the tokens before it); each output token costs one LM-head row."""
    num_forward = prompt_len + output_len - 1
    sum_context = num_forward * (num_forward + 1) // 2
    return (
        num_forward * linear_flops_per_token(shape)
        + attention_flops(shape, 1) * sum_context
        + output_len * 2 * shape.dim * shape.vocab_size
    )


def workload_flops(shape: Shape, workload: Workload, static_batch: int | None = None) -> int:
    """The matmul work of the workload: each request's own, or, for static batches of
    `static_batch`, every row padded to its batch's longest prompt and longest output."""
    lens = [len(p) for p in workload.prompts]
    outs = workload.max_tokens
    if static_batch is None:
        return sum(request_flops(shape, p, n) for p, n in zip(lens, outs, strict=True))
    total = 0
    for first in range(0, len(lens), static_batch):
        rows = slice(first, first + static_batch)
        total += len(lens[rows]) * request_flops(shape, max(lens[rows]), max(outs[rows]))
    return total


def measure_gemm_flops(device: str = "cpu", seconds: float = 1.0) -> tuple[float, str]:
    """Best float32 GEMM rate (FLOP/s) over a few shapes, and the shape that reached it.
    The best, not a typical, rate: it makes the floor as hard to reach as possible."""
    shapes = [(2048, 2048, 2048), (2048, 512, 1376), (4096, 512, 512), (1024, 1376, 512)]
    best, best_shape = 0.0, ""
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        torch.mm(a, b)  # warm-up
        num_runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            num_runs += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rate = 2 * m * k * n * num_runs / (time.perf_counter() - start)
        if rate > best:
            best, best_shape = rate, f"[{m}x{k}] @ [{k}x{n}]"
    return best, best_shape
