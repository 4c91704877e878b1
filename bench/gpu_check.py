"""The device check: Loom's GPU path verified, then measured, in one run (`bench/gpu_check.sh`).

Verification first; a MISS there (or a part that fails) makes the check exit 1 and skips
every measurement, since figures of a wrong kernel mean nothing:

1. The Triton kernel against the torch reference on random mixes, float32 and bfloat16.
2. The bundled model's greedy text: Triton with CUDA graphs, Triton eager, the torch reference.

Then the measurements on a random-weight model of Llama-2-7B's shape in bfloat16, drawn on the
GPU; `--quick` (about 3 minutes on an H100) stops after the first:

3. Batch-1 and batch-32 decode steps, CUDA graphs on and off; batch 1 against the HBM floor
   (bytes a step reads / measured copy bandwidth).
4. Throughput on 256 requests (prompts 128-1,024, outputs 128-512) with graphs, against
   Hugging Face transformers' `generate` on the same requests in static batches while the
   time budget lasts, then without graphs.

Without a GPU the same script runs end to end in seconds: the kernel under Triton's
interpreter on small mixes (float16 stands in for bfloat16, which the interpreter cannot
multiply), the bundled model without graphs, and the measurements at a toy size on the CPU
(their figures mean nothing; they show the code runs). Every part that needs a GPU says so.

`--plant nan|wrong-kernel` puts a fault into the kernel part's output, for the check's own
test (tests/test_gpu_check.py): the check must then exit 1. Nothing else reads it.
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
KERNEL_GOALS = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 2e-2}  # max error / max |out|


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

    def decode_steps(self) -> None:
        """Batch 1 and 32, graphs on then off; in the full check, the workload with graphs on
        the same engine."""
        parts, report = self.parts, self.report
        bandwidth = parts.copy_bandwidth(self.device, (2 << 30) if self.on_gpu else (64 << 20))
        found = {"copy_bandwidth_gb_s": bandwidth / 1e9}
        modes = ("graphs", "eager") if self.on_gpu else ("eager",)
        for mode in modes:
            engine, worker = parts.random_llama_engine(
                self.params, self.device.type, self.dtype, max_num_seqs=self.max_num_seqs,
                enforce_eager=mode == "eager",
            )  # fmt: skip
            parts.warm_up_prefills(engine)
            step_bytes = parts.step_weight_bytes(worker.inner)[1]
            found["floor_ms"] = 1e3 * step_bytes / bandwidth
            found[mode] = {
                "batch1": parts.decode_steps(engine, worker, 1, 128, 128 if self.on_gpu else 8),
                "batch32": parts.decode_steps(engine, worker, 32, 128, 64 if self.on_gpu else 4),
                "graphs": bool(worker.inner.decode_graphs),
                "kv_blocks": engine.info.num_kv_blocks,
            }
            if mode == modes[0] and not self.opts.quick:  # the workload too, graphs on a GPU
                head = self.workload.head(self.hf_batch_size)
                found["workload"] = parts.loom_throughput(engine, worker, self.workload)
                found["hf_subset"] = parts.loom_throughput(engine, worker, head)
            del engine, worker
            release()
        report.record("decode", found)
        self._decode_rows(found, step_bytes, bandwidth)

    def _decode_rows(self, found: dict, step_bytes: int, bandwidth: float) -> None:
        report, floor = self.report, found["floor_ms"]
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
        if "graphs" in found:
            eager, graphs = found["eager"]["batch1"], found["graphs"]["batch1"]
            gain = eager["engine_step_ms"] / graphs["engine_step_ms"]
            report.row("batch-1 step, eager / graphs", f"{gain:.2f}x", f">= {GRAPHS_GOAL}x",
                       goal_verdict(gain >= GRAPHS_GOAL, True))  # fmt: skip
        if "workload" in found:
            full = found["workload"]
            report.row(f"Loom, {full['requests']} requests, {'graphs' if self.on_gpu else 'eager'}",
                       f"{full['output_tok_s']:,.0f} output tok/s in {full['seconds']} s, "
                       f"{full['graph_replays']} of {full['steps']} steps replayed")  # fmt: skip

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
        loom, head = report.results["decode"]["workload"], report.results["decode"]["hf_subset"]
        report.row(f"transformers generate, first {found['requests']} requests",
                   f"{found['output_tok_s']:,.0f} output tok/s in {found['batches']} static "
                   f"batches of {found['batch_size']}, {found['seconds']} s")  # fmt: skip
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
    for name, part in parts:
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
        if not verifying and report.failures:
            return


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser("bench/gpu_check.sh", description=__doc__, formatter_class=raw)
    parser.add_argument("--quick", action="store_true", help="verification and decode steps only")
    parser.add_argument("--budget-s", type=float, help="start no measurement after (default "
                        "180 with --quick, else 400)")  # fmt: skip
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--plant", choices=("nan", "wrong-kernel"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    on_gpu = torch.cuda.is_available()
    if not on_gpu:  # before anything makes the Triton kernels (bench.gpu_parts imports them)
        os.environ.setdefault("TRITON_INTERPRET", "1")
    report = Report(opts.budget_s or (180.0 if opts.quick else 400.0))
    report.record("environment", environment(on_gpu))
    report.note(f"environment: {report.results['environment']}")
    if opts.plant:
        report.note(f"PLANTED FAULT in the kernel part: {opts.plant} (a test of the check)")
    check = Check(opts, report)
    try:
        run_parts(report, [("kernel", check.kernel), ("bundled model", check.bundled_text)], True)
        measurements = [("decode steps", check.decode_steps)]
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
