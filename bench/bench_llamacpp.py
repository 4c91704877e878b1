"""Loom against llama.cpp's `llama-server` on the same many-request work, in one run.

    python -m bench.bench_llamacpp --server PATH/llama-server --gguf llama60m-f32.gguf

llama.cpp is not part of Loom: build its server from source and convert the benchmark
model with llama.cpp's own converter (F32, so both run the same float32 weights), e.g.

    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-server
    python -m bench.export_hf bench/models/llama60m bench/models/llama60m-hf
    PYTHONPATH=gguf-py python convert_hf_to_gguf.py bench/models/llama60m-hf \\
        --outtype f32 --outfile bench/models/llama60m-f32.gguf

The workload is benchmark a's shape (random token-id prompts, greedy, EOS ignored, each
request exactly its max_tokens). llama-server runs with continuous batching and one slot per
request (`--parallel N`, each slot holding a whole request), on the same threads as Loom; its
requests go over loopback HTTP all at once (token ids in, token ids back), and Loom's through
its offline engine. Each runs the workload once untimed first; then the two alternate over
the repeats, each run's wall time from the first request sent to the last token received.
Both run without a prefix cache (`cache_prompt: false`; Loom's `enable_prefix_caching` off),
so a repeat recomputes every prompt as the first pass did.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from bench.common import DEFAULT_MODEL_DIR, markdown_table, run_header, write_section
from bench.flops import ModelShape
from bench.loom_runs import build_engine, run_workload, warm_up
from bench.workload import Workload, uniform_workload

SECTION = "Loom vs llama.cpp's server"


class LlamaServer:
    """llama-server on loopback, started and stopped around the runs."""

    def __init__(self, binary: Path, gguf: Path, parallel: int, slot_len: int, port: int,
                 threads: int) -> None:  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        command = [
            str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
            "--parallel", str(parallel), "--ctx-size", str(parallel * slot_len),
            "--threads", str(threads), "--threads-batch", str(threads),
            "--batch-size", "2048", "--ubatch-size", "512", "--cont-batching",
        ]  # fmt: skip
        # Its log goes to a file: a pipe nobody reads would fill and stall the server.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115  (closed with the server)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as reply:
                    if json.load(reply).get("status") == "ok":
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")[-2000:]
                self.close()
                raise SystemExit(f"llama-server did not start: {err}")
            time.sleep(0.2)

    def complete(self, prompt: list[int], max_tokens: int) -> list[int]:
        body = {
            "prompt": prompt, "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
            "ignore_eos": True, "cache_prompt": False, "return_tokens": True,
        }  # fmt: skip
        request = urllib.request.Request(
            f"{self.url}/completion",
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=3600) as reply:
            return list(json.load(reply)["tokens"])

    def run(self, workload: Workload) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(workload.prompts)) as pool:
            outputs = list(pool.map(self.complete, workload.prompts, workload.max_tokens))
        wall = time.perf_counter() - start
        for out, n in zip(outputs, workload.max_tokens, strict=True):
            if len(out) != n:
                raise RuntimeError(f"llama-server gave {len(out)} tokens for a request of {n}")
        return wall, outputs

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", type=Path, required=True, help="llama.cpp's llama-server binary")
    p.add_argument("--gguf", type=Path, required=True, help="the same model as llama.cpp F32")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR, help="Loom's copy")
    p.add_argument("--num-requests", type=int, default=32)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 256), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--port", type=int, default=8089)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()
    shape = ModelShape.from_meta_dir(args.model)
    workload = uniform_workload(args.num_requests, tuple(args.prompt_len),
                                tuple(args.output_len), shape.vocab_size, args.seed)  # fmt: skip
    useful = workload.num_output_tokens
    threads = torch.get_num_threads()
    # No prefix cache: the repeats send the same prompts, and llama-server's is off too.
    engine, _ = build_engine(args.model, "cpu", enable_prefix_caching=False)
    warm_up(engine)
    server = LlamaServer(args.server, args.gguf, args.num_requests,
                         args.prompt_len[1] + args.output_len[1], args.port, threads)  # fmt: skip
    walls: dict[str, list[float]] = {"Loom": [], "llama.cpp": []}
    outputs: dict[str, list[list[int]]] = {}
    try:
        # One untimed pass each first: the first pass over fresh memory (page faults, the
        # allocators growing) is not what serving costs.
        run_workload(engine, workload)
        server.run(workload)
        for repeat in range(args.repeats):
            order = ["Loom", "llama.cpp"] if repeat % 2 == 0 else ["llama.cpp", "Loom"]
            for name in order:
                wall, out = (
                    run_workload(engine, workload) if name == "Loom" else server.run(workload)
                )
                walls[name].append(wall)
                outputs[name] = out
                print(f"{name}: {wall:.1f} s, {useful / wall:.1f} tok/s", file=sys.stderr)
    finally:
        server.close()
    same = sum(a == b for a, b in zip(outputs["Loom"], outputs["llama.cpp"], strict=True))
    loom_wall = statistics.median(walls["Loom"])
    rows = [
        [name, statistics.median(ws), useful / statistics.median(ws),
         statistics.median(ws) / loom_wall]
        for name, ws in walls.items()
    ]  # fmt: skip
    header = ["system", "wall s (median)", "output tok/s", "wall / Loom's"]
    body = (
        f"{__doc__.split(chr(10) + chr(10), 3)[3].strip()}\n\n"
        f"{run_header('cpu')}\n"
        f"Workload: {args.num_requests} requests, prompts {args.prompt_len[0]}-"
        f"{args.prompt_len[1]}, outputs {args.output_len[0]}-{args.output_len[1]} tokens "
        f"({useful} in all), {args.repeats} runs each, {threads} threads each, model "
        f"{args.model.name} in float32.\n\n{markdown_table(header, rows)}\n\n"
        f"Same greedy tokens for {same}/{args.num_requests} requests (float32 sums in "
        "another order can flip a near-tie; the sequence then diverges).\n"
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
