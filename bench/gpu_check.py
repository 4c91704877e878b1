"""The device check: Loom's GPU path verified, then measured, in one run (`bench/gpu_check.sh`).

Verification first; a MISS there (or a part that fails) makes the check exit 1 and skips
every measurement, since figures of a wrong kernel mean nothing:

1. The Triton attention kernel against the torch reference on random mixes, float32 and
   bfloat16; then split-KV (2, 4, 16 ways and as the policy chooses) on contexts to 8,192,
   each launch repeated, which must give the same bits.
2. The fused kernels (residual add + RMSNorm, RoPE + K/V write, SiLU * up) against the torch
   compositions they replace.
3. The bundled model's greedy text: Triton with CUDA graphs, Triton eager, the torch reference.
4. The LoRA adapter kernels (worker/lora_triton.py) against the torch adapter path in float32,
   float32 and bfloat16, on one layer of Llama-3-8B's shape: ranks 8 to 64, fused slices,
   rows in adapter runs and shuffled, some on no adapter (which must keep their bits).

Then the measurements on a random-weight model of Llama-2-7B's shape in bfloat16, drawn on the
GPU; `--quick` (3-4 minutes on an H100, estimated) leaves out the last. Each starts only while
the time budget lasts, and one that fails does not stop the next:

5. Batch-1 and batch-32 decode steps, CUDA graphs on and off; batch 1 against the HBM floor
   (bytes a step reads / measured copy bandwidth); batch 1 at 4,000 tokens of context with the
   split-KV policy and unsplit; Triton compiles after start (warm-up must leave none).
6. LoRA adapters against the base model: 64 requests on the base alone, then spread over 4
   random rank-16 adapters, on one engine with graphs (adapter decode steps must replay
   them); batch-1 and batch-32 decode steps on the base and on an adapter.
7. The attention launch alone at batch 1, split against unsplit; the kernels of one decode
   layer besides its GEMMs, counted with the profiler (at most 5).
8. Throughput on 256 requests (prompts 128-1,024, outputs 128-512) with graphs, against
   Hugging Face transformers' `generate` on the same requests in static batches while the
   time budget lasts.

Without a GPU the same script runs end to end in about a minute: the kernels under Triton's
interpreter on small mixes (float16 stands in for bfloat16, which the interpreter cannot
multiply), the bundled model without graphs, and the measurements at a toy size on the CPU
(their figures mean nothing; they show the code runs). Every part that needs a GPU says so.

`--plant nan|wrong-kernel` puts a fault into the attention kernel's output, split or not (and
`wrong-kernel` gives the LoRA kernels each row's neighbour's adapter), for the check's own test
(tests/test_gpu_check.py): the check must then exit 1. Nothing else reads it.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import REPO_ROOT, load_average, machine_description

FLOOR_GOAL = 1.25  # batch-1 decode step <= 1.25x the HBM floor
GRAPHS_GOAL = 1.3  # batch-1 step: graphs >= 1.3x faster than eager
HF_GOAL = 5.0  # throughput >= 5x transformers' generate
LONG_CONTEXT, LONG_TOKENS = 4000, 64  # batch-1 decode at 4,000 tokens of context (mean)
# Seconds after which no measurement starts (bench/gpu_check.sh stops the run 90 s later
# with --quick, 60 s later without; verification always runs).
QUICK_BUDGET_S, FULL_BUDGET_S = 240.0, 400.0
KERNEL_GOALS = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-2}  # max error / max |out|
# LoRA: max error / max |adapter term|; the shrink sums up to 14,336 products, and in 16 bits
# the rank-sized intermediate rounds as the torch path's does.
LORA_GOALS = {"float32": 5e-5, "bfloat16": 3e-2, "float16": 1e-2}
LORA_THROUGHPUT_GOAL = 0.7  # 4 adapters mixed / the base model alone (issue 24's bar)


class Report:
    """Rows of the final table, and the full results, saved after every part so that a run
    cut short still leaves what it measured: $OUT/gpu_check.json when OUT is set (the device
    machine hands $OUT back), else bench/out/gpu_check.json (ignored by git)."""

    def __init__(self, budget_s: float) -> None:
        self.path = Path(os.environ.get("OUT") or REPO_ROOT / "bench" / "out") / "gpu_check.json"
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.rows: list[tuple[str, str, str, str]] = []  # check, result, goal, verdict
        self.results: dict[str, Any] = {}
        self.failures = 0  # verification rows that missed, and parts that raised

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)

    def row(self, check: str, result: str, goal: str = "", verdict: str = "") -> None:
        self.rows.append((check, result, goal, verdict))
        self.note(f"{check}: {result}" + (f" ({verdict})" if verdict else ""))

    def verify(self, check: str, result: str, goal: str, ok: bool) -> None:
        """A verification row: `ok` or `MISS`; a miss fails the check."""
        self.failures += not ok
        self.row(check, result, goal, "ok" if ok else "MISS")

    def skip(self, check: str, why: str) -> None:
        self.row(check, "-", "", f"SKIPPED: {why}")

    def record(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        seconds = round(time.monotonic() - self.started, 1)
        body = {**self.results, "table": self.rows, "failures": self.failures,
                "seconds": seconds, "load": load_average()}  # fmt: skip
        self.path.write_text(json.dumps(body, indent=2, default=str) + "\n")

    def table(self) -> str:
        header = ("check", "result", "goal", "verdict")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(4)]
        lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                 for row in [header, *self.rows]]  # fmt: skip
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)


def goal_verdict(ok: bool, on_gpu: bool) -> str:
    """A measurement against its goal: reported, never failing the check."""
    return ("met" if ok else "missed") if on_gpu else "smoke (CPU)"


class Check:
    """The parts in order, with what they share: the device, the report, the options."""

    def __init__(self, opts: argparse.Namespace, report: Report) -> None:
        from bench import gpu_parts
        from bench.common import uniform_workload

        self.parts, self.opts, self.report = gpu_parts, opts, report
        self.on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.on_gpu else "cpu")
        self.dtype = torch.bfloat16 if self.on_gpu else torch.float32
        self.params = gpu_parts.LLAMA2_7B if self.on_gpu else gpu_parts.SMOKE
        self.workload = (
            uniform_workload(256, (128, 1024), (128, 512), self.params["vocab_size"], seed=0)
            if self.on_gpu
            else uniform_workload(8, (16, 64), (8, 24), self.params["vocab_size"], seed=0)
        )
        self.hf_batch_size = opts.hf_batch_size if self.on_gpu else 4
        self.max_num_seqs = 32 if opts.quick else 256

    def kernel(self) -> None:
        # The interpreter cannot multiply bfloat16 tiles: on the CPU, float16 stands in.
        low = torch.bfloat16 if self.on_gpu else torch.float16
        trials = 3 if self.on_gpu else 2
        found = self.parts.kernel_check(self.device, [torch.float32, low], trials, self.opts.plant)
        self.report.record("kernel", found)
        where = "" if self.on_gpu else " (CPU interpreter, small mixes)"
        for name, res in found.items():
            goal = KERNEL_GOALS[name]
            ok = not math.isnan(res["rel_err"]) and res["rel_err"] <= goal and res["cache_equal"]
            self.report.verify(
                f"kernel vs reference, {name}{where}",
                f"rel err {res['rel_err']:.1e} (torch in {name}: {res['torch_rel_err']:.1e}), "
                f"cache writes {'equal' if res['cache_equal'] else 'DIFFER'}, "
                f"{res['launches']} launches",
                f"<= {goal:.0e}, cache writes equal", ok,
            )  # fmt: skip
        if not self.on_gpu:
            self.report.skip("kernel vs reference, bfloat16", "the interpreter has no bf16 dot")
        self._split_kv([torch.float32, low], where)

    def _split_kv(self, dtypes: list[torch.dtype], where: str) -> None:
        found = self.parts.split_kv_check(self.device, dtypes, 4 if self.on_gpu else 3,
                                          not self.opts.quick, self.opts.plant)  # fmt: skip
        self.report.record("split_kv", found)
        for name, res in found.items():
            goal = KERNEL_GOALS[name]
            ok = (not math.isnan(res["rel_err"]) and res["rel_err"] <= goal
                  and res["cache_equal"] and res["repeat_equal"])  # fmt: skip
            self.report.verify(
                f"split-KV vs reference, {name}{where}",
                f"rel err {res['rel_err']:.1e} (torch in {name}: {res['torch_rel_err']:.1e}), "
                f"{res['launches']} launches in {sorted(set(res['splits']))} splits, repeated "
                f"{'bit for bit' if res['repeat_equal'] else 'DIFFERENTLY (a race)'}",
                f"<= {goal:.0e}, repeats identical", ok,
            )  # fmt: skip

    def fused(self) -> None:
        """The fused norm, RoPE + K/V write and SiLU kernels against their torch compositions
        (float16 stands in for bfloat16 on the CPU: the interpreter truncates to bfloat16)."""
        low = torch.bfloat16 if self.on_gpu else torch.float16
        found = self.parts.fused_ops_check(self.device, [torch.float32, low])
        self.report.record("fused", found)
        for name, res in found.items():
            # float32: reassociation. 16 bits: the kernel rounds where torch does, so a value
            # differs when an intermediate rounds the other way (a unit in the last place),
            # which the final rounding can make two; relative to the largest value.
            goal = 1e-5 if name == "float32" else 2 * torch.finfo(getattr(torch, name)).eps
            errors = {k: v for k, v in res.items() if isinstance(v, float)}
            bad = [k for k, v in errors.items() if math.isnan(v) or v > goal]
            self.report.verify(
                f"fused kernels vs torch, {name}",
                ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
                + ("" if res["cache_untouched_equal"] else ", OTHER CACHE SLOTS CHANGED"),
                f"each <= {goal:.1e}", not bad and res["cache_untouched_equal"],
            )  # fmt: skip

    def bundled_text(self) -> None:
        found = self.parts.greedy_texts(self.device, num_tokens=64 if self.on_gpu else 8)
        self.report.record("bundled_text", found)
        for dtype, res in found.items():
            for name, same in res["agree"].items():
                # In bfloat16 two kernels may round a near-tie apart: reported, not judged.
                if dtype == "float32" or name == "graphs vs eager":
                    self.report.verify(f"bundled model greedy text, {dtype}: {name}", same,
                                       "identical", same == "identical")  # fmt: skip
                else:
                    self.report.row(f"bundled model greedy text, {dtype}: {name}", same)
            if self.on_gpu:
                replays = res["runs"]["triton graphs"]["graph_replays"]
                self.report.verify(f"bundled model, {dtype}: steps replayed from graphs",
                                   str(replays), "> 0", replays > 0)  # fmt: skip
        if not self.on_gpu:
            self.report.skip("bundled model greedy text, CUDA graphs", "CUDA graphs need a GPU")

    def lora_kernels(self) -> None:
        low = torch.bfloat16 if self.on_gpu else torch.float16
        shape = self.parts.LORA_GPU_SHAPE if self.on_gpu else self.parts.LORA_CPU_SHAPE
        found = self.parts.lora_kernel_check(self.device, [torch.float32, low], shape,
                                             self.opts.plant)  # fmt: skip
        self.report.record("lora_kernels", found)
        where = "" if self.on_gpu else " (CPU interpreter, toy shape)"
        for name, res in found.items():
            goal = LORA_GOALS[name]
            ok = (not math.isnan(res["rel_err"]) and res["rel_err"] <= goal
                  and res["base_rows_equal"] and res["repeat_equal"])  # fmt: skip
            self.report.verify(
                f"LoRA kernels vs torch path, {name}{where}",
                f"rel err {res['rel_err']:.1e} (torch in {name}: {res['torch_rel_err']:.1e}), "
                f"base rows {'kept' if res['base_rows_equal'] else 'CHANGED'}, repeats "
                f"{'identical' if res['repeat_equal'] else 'DIFFER'}, {res['launches']} launches",
                f"<= {goal:.0e}, base rows kept, repeats identical", ok,
            )  # fmt: skip

    def lora_throughput(self) -> None:
        import tempfile

        from bench.common import uniform_workload

        vocab = self.params["vocab_size"]
        workload = (uniform_workload(64, (128, 512), (64, 128), vocab, seed=1) if self.on_gpu
                    else uniform_workload(8, (16, 48), (4, 8), vocab, seed=1))  # fmt: skip
        with tempfile.TemporaryDirectory() as adapters_dir:
            found = self.parts.lora_throughput(self.params, self.device.type, self.dtype,
                                               Path(adapters_dir), workload,
                                               self.max_num_seqs)  # fmt: skip
        self.report.record("lora", found)
        base, mixed = found["base"], found["4 adapters"]
        ratio = mixed["output_tok_s"] / base["output_tok_s"]
        path = "Triton slots" if found["slotted"] else "torch"
        self.report.row(f"LoRA: {len(workload.prompts)} requests over 4 adapters / base ({path})",
                        f"{ratio:.2f}x ({mixed['output_tok_s']:,.0f} vs {base['output_tok_s']:,.0f}"
                        " output tok/s)", f">= {LORA_THROUGHPUT_GOAL}x",
                        goal_verdict(ratio >= LORA_THROUGHPUT_GOAL, self.on_gpu))  # fmt: skip
        if self.on_gpu:
            self.report.verify("LoRA: adapter decode steps replayed from graphs",
                               str(mixed["adapted_replays"]), "> 0",
                               mixed["adapted_replays"] > 0)  # fmt: skip
        for batch in (1, 32):
            plain, adapted = found[f"batch{batch}_base"], found[f"batch{batch}_adapter"]
            self.report.row(f"LoRA: batch-{batch} decode step, adapter / base",
                            f"{adapted['engine_step_ms']:.2f} / {plain['engine_step_ms']:.2f} ms"
                            f" = {adapted['engine_step_ms'] / plain['engine_step_ms']:.2f}x")

    def decode_steps(self) -> None:
        """Batch 1 and 32, graphs on then off; in the full check, the workload with graphs on
        the same engine. What was measured is saved and shown even if a later step fails."""
        parts, report = self.parts, self.report
        bandwidth = parts.copy_bandwidth(self.device, (2 << 30) if self.on_gpu else (64 << 20))
        found: dict[str, Any] = {"copy_bandwidth_gb_s": bandwidth / 1e9}
        modes = ("graphs", "eager") if self.on_gpu else ("eager",)
        compiles = parts.TritonCompiles() if self.on_gpu else None
        try:
            for mode in modes:
                engine, worker = parts.random_llama_engine(
                    self.params, self.device.type, self.dtype, max_num_seqs=self.max_num_seqs,
                    enforce_eager=mode == "eager",
                )  # fmt: skip
                if compiles:  # warm-up at start compiled what the steps below launch
                    compiles.clear()
                found["step_weight_bytes"] = parts.step_weight_bytes(worker.inner)[1]
                found["floor_ms"] = 1e3 * found["step_weight_bytes"] / bandwidth
                found[mode] = {
                    "batch1": parts.decode_steps(engine, worker, 1, 128, 128 if self.on_gpu else 8),
                    "batch32": parts.decode_steps(engine, worker, 32, 128,
                                                  64 if self.on_gpu else 4),  # fmt: skip
                    "graphs": bool(worker.inner.decode_graphs),
                    "kv_blocks": engine.info.num_kv_blocks,
                }
                if mode == modes[0] and not self.opts.quick:  # the workload, graphs on a GPU
                    head = self.workload.head(self.hf_batch_size)
                    found["workload"] = parts.loom_throughput(engine, worker, self.workload)
                    found["hf_subset"] = parts.loom_throughput(engine, worker, head)
                if compiles:
                    found[mode]["triton_compiles_after_start"] = list(compiles.names)
                report.record("decode", found)
                if mode == "graphs":  # last on this engine: batch 1 at 4,000 tokens
                    self._long_context(engine, worker, found)
                del engine, worker
                release()
        finally:
            report.record("decode", found)
            if any(mode in found for mode in modes):
                self._decode_rows(found, bandwidth)

    def _long_context(self, engine: Any, worker: Any, found: dict) -> None:
        """Batch-1 steps at 3,968-4,032 tokens of context with the graphs as captured (the
        split-KV policy), then captured again unsplit; a failure here is its own row, the
        figures before it stand."""
        parts, prompt = self.parts, LONG_CONTEXT - LONG_TOKENS // 2
        try:
            long = {"batch1_long": parts.decode_steps(engine, worker, 1, prompt, LONG_TOKENS)}
            parts.recapture_graphs(worker.inner, self.max_num_seqs, num_splits=1)
            long["batch1_long_unsplit"] = parts.decode_steps(engine, worker, 1, prompt,
                                                             LONG_TOKENS)  # fmt: skip
        except Exception as exc:
            traceback.print_exc()
            self.report.failures += 1
            self.report.row(f"batch-1 decode at {LONG_CONTEXT:,} tokens",
                            f"{type(exc).__name__}: {exc}"[:200], "", "FAILED")  # fmt: skip
            return
        found["graphs"].update(long)
        kv_bytes = parts.kv_bytes_read(worker.inner.model.args, LONG_CONTEXT, self.dtype)
        found["floor_long_ms"] = found["floor_ms"] + 1e3 * kv_bytes / (
            1e9 * found["copy_bandwidth_gb_s"])

    def _decode_rows(self, found: dict, bandwidth: float) -> None:
        report, floor, step_bytes = self.report, found["floor_ms"], found["step_weight_bytes"]
        for mode in ("graphs", "eager"):
            if mode not in found:
                report.skip(f"decode steps, CUDA {mode}", "CUDA graphs need a GPU")
                continue
            one, many = found[mode]["batch1"], found[mode]["batch32"]
            ratio = one["engine_step_ms"] / floor
            report.row(
                f"batch-1 decode step, {mode}",
                f"{one['engine_step_ms']:.2f} ms (worker {one['worker_step_ms']:.2f}); floor "
                f"{floor:.2f} ms = {step_bytes / 1e9:.3g} GB / {bandwidth / 1e9:.0f} GB/s: "
                f"{ratio:.2f}x",
                f"<= {FLOOR_GOAL}x floor" if mode == "graphs" else "",
                goal_verdict(ratio <= FLOOR_GOAL, self.on_gpu) if mode == "graphs" else "",
            )  # fmt: skip
            report.row(f"batch-32 decode step, {mode}", f"{many['engine_step_ms']:.2f} ms")
        if "graphs" in found and "eager" in found:
            eager, graphs = found["eager"]["batch1"], found["graphs"]["batch1"]
            gain = eager["engine_step_ms"] / graphs["engine_step_ms"]
            report.row("batch-1 step, eager / graphs", f"{gain:.2f}x", f">= {GRAPHS_GOAL}x",
                       goal_verdict(gain >= GRAPHS_GOAL, True))  # fmt: skip
        if "workload" in found:
            full = found["workload"]
            report.row(f"Loom, {full['requests']} requests, {'graphs' if self.on_gpu else 'eager'}",
                       f"{full['output_tok_s']:,.0f} output tok/s in {full['seconds']} s, "
                       f"{full['graph_replays']} of {full['steps']} steps replayed")  # fmt: skip
        self._long_rows(found)

    def _long_rows(self, found: dict) -> None:
        report, graphs = self.report, found.get("graphs", {})
        if "triton_compiles_after_start" not in graphs:
            report.skip("Triton compiles after start", "needs a GPU (CPU: test_kernel_warmup)")
        for mode in ("graphs", "eager"):
            if "triton_compiles_after_start" in found.get(mode, {}):
                names = found[mode]["triton_compiles_after_start"]
                report.row(f"Triton compiles after start, {mode} engine", f"{len(names)}"
                           + (f" ({', '.join(sorted(set(names)))})" if names else ""),
                           "0", "met" if not names else "missed")  # fmt: skip
        if "batch1_long_unsplit" not in graphs:
            why = "needs a GPU" if not self.on_gpu else "did not run (see above)"
            report.skip(f"batch-1 decode at {LONG_CONTEXT:,} tokens, split-KV on / off", why)
            return
        floor = found["floor_long_ms"]
        for key, name in (("batch1_long", "split-KV policy"), ("batch1_long_unsplit", "unsplit")):
            ms = graphs[key]["engine_step_ms"]
            report.row(f"batch-1 decode at {LONG_CONTEXT:,} tokens, graphs, {name}",
                       f"{ms:.2f} ms; floor (weights + K/V) {floor:.2f} ms: {ms / floor:.2f}x")
        gain = graphs["batch1_long_unsplit"]["engine_step_ms"] / graphs["batch1_long"][
            "engine_step_ms"]
        report.row(f"batch-1 at {LONG_CONTEXT:,} tokens, unsplit / split", f"{gain:.2f}x")

    def split_and_launches(self) -> None:
        """The attention launch alone at batch 1, split-KV as the policy chooses against
        unsplit, and the kernels of one decode layer counted with the profiler. On the CPU
        the launches run at a toy size under the interpreter (timings that mean nothing), and
        the count is the unit test's: tests/worker/test_launch_count.py."""
        report, parts = self.report, self.parts
        decode = report.results.get("decode", {})
        bandwidth = (1e9 * decode["copy_bandwidth_gb_s"] if "copy_bandwidth_gb_s" in decode
                     else parts.copy_bandwidth(self.device, 64 << 20))  # fmt: skip
        if self.on_gpu:  # Llama-2-7B's heads (MHA) and Llama-3-8B's (GQA, 8 KV heads)
            shapes, where = ((32, 32, 128), (32, 8, 128)), ""
            contexts = (1024, 8192) if self.opts.quick else (1024, 4096, 8192)
            splits = (0, 1) if self.opts.quick else (0, 1, 2, 4, 8, 16)
        else:
            shapes, where = ((4, 1, 32),), " (CPU interpreter, toy size)"
            contexts, splits = (256,), (0, 1, 2)
        timings = parts.attention_timings(self.device, self.dtype, bandwidth, shapes, contexts,
                                          splits)  # fmt: skip
        report.record("attention_timings", timings)
        for row in timings:
            if row["policy"]:
                unsplit = next(r for r in timings if not r["policy"] and r["splits"] == 1
                               and r["context"] == row["context"]
                               and r["n_kv_heads"] == row["n_kv_heads"])  # fmt: skip
                report.row(
                    f"attention, batch 1, {row['n_kv_heads']} KV heads, {row['context']:,} "
                    f"tokens{where}",
                    f"{row['us']:.0f} us in {row['splits']} splits ({row['vs_floor']:.2f}x the "
                    f"K/V read), unsplit {unsplit['us']:.0f} us ({unsplit['vs_floor']:.2f}x)",
                )  # fmt: skip
        if not self.on_gpu:
            report.skip("kernels per decode layer besides its GEMMs", "owed: needs a GPU (the "
                        "CPU counts them by dispatch: tests/worker/test_launch_count.py)")
            return
        cases = {"batch 1 at 4,000 tokens (split)": [4000], "batch 64 at 500 tokens": [500] * 64}
        counted = parts.decode_layer_kernels(self.device, self.dtype, self.params, cases)
        report.record("layer_kernels", counted)
        for case, res in counted.items():
            report.row(f"kernels per decode layer besides its GEMMs, {case}",
                       f"{res['others']:g} ({', '.join(res['other_names'])}); "
                       f"GEMM kernels {res['gemms']:g}", "<= 5",
                       goal_verdict(res["others"] <= 5, True))  # fmt: skip

    def transformers(self) -> None:
        report = self.report
        if self.on_gpu and report.remaining() < 120:
            report.skip("transformers generate", "the time budget is spent")
            return
        try:
            model = self.parts.random_hf_llama(self.params, self.device.type, self.dtype)
        except ImportError:
            report.skip("transformers generate", "transformers is not installed")
            return
        budget = min(150.0, report.remaining() - 60) if self.on_gpu else 60.0
        found = self.parts.hf_throughput(model, self.workload, self.hf_batch_size, budget)
        report.record("hf", found)
        report.row(f"transformers generate, first {found['requests']} requests",
                   f"{found['output_tok_s']:,.0f} output tok/s in {found['batches']} static "
                   f"batches of {found['batch_size']}, {found['seconds']} s")  # fmt: skip
        decode = report.results.get("decode", {})
        if "workload" not in decode:
            report.skip("Loom / transformers", "Loom's workload did not run (see above)")
            return
        loom, head = decode["workload"], decode["hf_subset"]
        first = found["first_batch_output_tok_s"]
        report.row(f"Loom / transformers, the same first {head['requests']} requests",
                   f"{head['output_tok_s'] / first:.1f}x")  # fmt: skip
        ratio = loom["output_tok_s"] / found["output_tok_s"]
        report.row(f"Loom ({loom['requests']} requests) / transformers",
                   f"{ratio:.1f}x output tok/s", f">= {HF_GOAL}x",
                   goal_verdict(ratio >= HF_GOAL, self.on_gpu))  # fmt: skip


def release() -> None:
    """Give back the memory of models no longer referenced (graphs hold cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(on_gpu: bool) -> dict[str, str]:
    found = {
        "machine": machine_description("cuda" if on_gpu else "cpu"),
        "python": platform.python_version(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if on_gpu else "none (CPU run: GPU parts skipped)",
        "triton_interpret": os.environ.get("TRITON_INTERPRET", ""),
    }  # fmt: skip
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        found["triton"] = "absent"
    return found


def run_parts(report: Report, parts: list[tuple[str, Callable[[], None]]], verifying: bool):
    """Each part in turn, a failed one recorded and the next run all the same (a broken
    diagnostic must not cost the figures after it); a measurement starts only while the time
    budget lasts."""
    for name, part in parts:
        if not verifying and report.remaining() <= 0:
            report.skip(name, "the time budget is spent")
            continue
        try:
            part()
        except KeyboardInterrupt:  # the hard stop (bench/gpu_check.sh), or Ctrl-C
            report.failures += 1
            report.row(name, "interrupted: past the time limit", "", "FAILED")
            raise
        except Exception as exc:  # one broken part must not cost the others' figures
            traceback.print_exc()
            report.failures += 1
            report.row(name, f"{type(exc).__name__}: {exc}"[:200], "", "FAILED")
        release()


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser("bench/gpu_check.sh", description=__doc__, formatter_class=raw)
    parser.add_argument("--quick", action="store_true",
                        help="verification, decode steps, split-KV and launches; no transformers")
    parser.add_argument("--budget-s", type=float,
                        help=f"start no measurement after (default {QUICK_BUDGET_S:.0f} with "
                        f"--quick, else {FULL_BUDGET_S:.0f})")  # fmt: skip
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--plant", choices=("nan", "wrong-kernel"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # before anything makes the Triton kernels (bench.gpu_parts imports them)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    report = Report(opts.budget_s or (QUICK_BUDGET_S if opts.quick else FULL_BUDGET_S))
    report.record("environment", environment(on_gpu))
    report.note(f"environment: {report.results['environment']}")
    if opts.plant:
        report.note(f"PLANTED FAULT in the kernel part: {opts.plant} (a test of the check)")
    check = Check(opts, report)
    try:
        run_parts(report, [("kernel", check.kernel), ("fused kernels", check.fused),
                           ("bundled model", check.bundled_text),
                           ("LoRA kernels", check.lora_kernels)], True)  # fmt: skip
        measurements = [("decode steps", check.decode_steps),
                        ("LoRA adapters vs base", check.lora_throughput),
                        ("split-KV and launches", check.split_and_launches)]  # fmt: skip
        if not opts.quick:
            measurements.append(("transformers", check.transformers))
        if report.failures:
            report.skip("measurements", "verification failed: a wrong path's figures mean nothing")
        else:
            run_parts(report, measurements, False)
    finally:
        report.save()
        print("\n" + report.table(), flush=True)
        print(f"\nfull results: {report.path}\nCPU load: {load_average()}", flush=True)
    verdict = f"FAILED: {report.failures} verification miss(es) or failed part(s)"
    print(verdict if report.failures else "all verification passed", flush=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
