"""The device check: Loom's GPU path, verified and measured in one run (`bench/gpu_check.sh`).

1. The Triton kernel against the torch reference on random mixes (float32, bfloat16).
2. The bundled model's greedy text: Triton with CUDA graphs, Triton eager, the torch reference.
3. A random-weight model of Llama-2-7B's shape in bfloat16, drawn on the GPU: batch-1 decode
   step time against the HBM floor (bytes a step reads / measured copy bandwidth), graphs on
   and off; throughput on 256 requests (prompts 128-1,024, outputs 128-512).
4. Hugging Face transformers' `generate` on the same requests, same GPU, same run, in static
   batches while the time budget lasts.

Without a GPU the same script runs end to end: the kernel under Triton's interpreter on small
mixes, the bundled model with graphs skipped, and parts 3-4 at a toy size on the CPU (their
figures mean nothing there; they show the code runs). Every part that needs a GPU says so.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import traceback

import torch

if not torch.cuda.is_available():  # before anything makes the Triton kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import load_average  # noqa: E402
from bench.gpu_report import Report, results_path, verdict  # noqa: E402
from bench.workload import uniform_workload  # noqa: E402

# Goals of the issue this check answers.
FLOOR_GOAL = 1.25  # batch-1 decode step <= 1.25x the HBM floor
HF_GOAL = 5.0  # throughput >= 5x transformers' generate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting parts after")
    parser.add_argument("--hf-batch-size", type=int, default=64)
    opts = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    report = Report(results_path(), opts.budget_s)
    report.record("environment", environment(cuda))
    report.note(f"environment: {report.results['environment']}")
    device = torch.device("cuda" if cuda else "cpu")
    from bench.gpu_model import LLAMA2_7B, SMOKE

    params = LLAMA2_7B if cuda else SMOKE
    workload = (
        uniform_workload(256, (128, 1024), (128, 512), params["vocab_size"], seed=0)
        if cuda
        else uniform_workload(8, (16, 64), (8, 24), params["vocab_size"], seed=0)
    )
    hf_batch_size = opts.hf_batch_size if cuda else 4
    parts = [
        ("kernel", lambda: check_kernel(report, device)),
        ("bundled model", lambda: check_bundled_text(report, device)),
        ("Loom, graphs", lambda: bench_loom(report, device, params, workload, hf_batch_size)),
        ("transformers", lambda: bench_hf(report, device, params, workload, hf_batch_size)),
        ("Loom, eager", lambda: bench_loom_eager(report, device, params, workload)),
    ]
    failed = 0
    try:
        for name, part in parts:
            try:
                part()
            except Exception as exc:  # one broken part must not cost the others' figures
                traceback.print_exc()
                report.row(name, f"{type(exc).__name__}: {exc}"[:200], "", "FAILED")
                failed += 1
            release()  # each part's models are gone once it returns
    finally:
        report.save()
        print("\n" + report.table(), flush=True)
        print(f"\nfull results: {report.path}\nCPU load: {load_average()}", flush=True)
    return 1 if failed else 0


def environment(cuda: bool) -> dict[str, str]:
    from bench.common import machine_description

    found = {
        "machine": machine_description("cuda" if cuda else "cpu"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU run: GPU parts skipped)",
    }
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        found["triton"] = "absent"
    if not cuda:
        found["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "")
    return found


def check_kernel(report: Report, device: torch.device) -> None:
    from bench.gpu_kernel_check import kernel_check

    on_gpu = device.type == "cuda"
    # The interpreter cannot multiply bfloat16 tiles: on the CPU, float16 stands in.
    low = torch.bfloat16 if on_gpu else torch.float16
    found = kernel_check(device, [torch.float32, low], trials=3 if on_gpu else 2)
    report.record("kernel", found)
    where = "" if on_gpu else " (CPU interpreter, small mixes)"
    for name, res in found.items():
        goal = 1e-5 if name == "float32" else 2e-2
        ok = res["rel_err"] <= goal and res["cache_equal"]
        report.row(
            f"kernel vs reference, {name}{where}",
            f"rel err {res['rel_err']:.1e} (torch in {name}: {res['torch_rel_err']:.1e}), "
            f"{res['launches']} launches",
            f"<= {goal:.0e}, cache writes equal",
            verdict(ok),
        )
    if not on_gpu:
        report.skip("kernel vs reference, bfloat16", "the interpreter has no bfloat16 dot; GPU")


def check_bundled_text(report: Report, device: torch.device) -> None:
    from bench.gpu_text_check import greedy_texts

    on_gpu = device.type == "cuda"
    found = greedy_texts(device, num_tokens=64 if on_gpu else 12)
    report.record("bundled_text", found)
    for dtype, res in found.items():
        for name, same in res["agree"].items():
            # In bfloat16 two kernels may round a near-tie apart: reported, not judged.
            judged = dtype == "float32" or name == "graphs vs eager"
            report.row(
                f"bundled model greedy text, {dtype}: {name}",
                same,
                "identical" if judged else "",
                verdict(same == "identical") if judged else "",
            )
        if on_gpu:
            replays = res["runs"]["triton graphs"]["graph_replays"]
            report.row(f"bundled model, {dtype}: steps replayed", str(replays), "> 0",
                       verdict(replays > 0))  # fmt: skip
    if not on_gpu:
        report.skip("bundled model greedy text, CUDA graphs", "CUDA graphs need a GPU")


def bench_loom(report: Report, device, params, workload, hf_batch_size: int) -> None:
    from bench.gpu_bench import copy_bandwidth, decode_steps, loom_throughput
    from bench.gpu_model import random_llama_engine, weight_bytes
    from bench.loom_runs import warm_up

    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    bandwidth = copy_bandwidth(device, (2 << 30) if on_gpu else (64 << 20))
    engine, worker = random_llama_engine(params, device.type, dtype, max_num_seqs=256)
    total_bytes, step_bytes = weight_bytes(worker.inner)
    floor_ms = 1e3 * step_bytes / bandwidth
    warm_up_prefills(engine, warm_up)
    batch1 = decode_steps(engine, worker, 1, 128, 256 if on_gpu else 16)
    batch32 = decode_steps(engine, worker, 32, 128, 128 if on_gpu else 8)
    full = loom_throughput(engine, worker, workload)
    head = loom_throughput(engine, worker, workload.head(hf_batch_size))
    report.record("loom_graphs", {
        "copy_bandwidth_gb_s": bandwidth / 1e9, "weight_bytes": total_bytes,
        "step_weight_bytes": step_bytes, "floor_ms": floor_ms,
        "kv_blocks": engine.info.num_kv_blocks, "graphs": bool(worker.inner.decode_graphs),
        "batch1": batch1, "batch32": batch32, "workload": full, "hf_subset": head,
    })  # fmt: skip
    ratio = batch1["engine_step_ms"] / floor_ms
    mode = "graphs" if on_gpu else "CPU smoke, no graphs"
    report.row(
        f"batch-1 decode step, {mode}",
        f"{batch1['engine_step_ms']:.2f} ms (worker {batch1['worker_step_ms']:.2f}); floor "
        f"{floor_ms:.2f} ms = {step_bytes / 1e9:.3g} GB / {bandwidth / 1e9:.0f} GB/s: "
        f"{ratio:.2f}x",
        f"<= {FLOOR_GOAL}x floor",
        verdict(ratio <= FLOOR_GOAL) if on_gpu else "smoke (CPU)",
    )
    report.row(f"batch-32 decode step, {mode}", f"{batch32['engine_step_ms']:.2f} ms")
    report.row(
        f"Loom, {full['requests']} requests, {mode}",
        f"{full['output_tok_s']:,.0f} output tok/s ({full['total_tok_s']:,.0f} total) in "
        f"{full['seconds']} s, {full['graph_replays']} of {full['steps']} steps replayed",
    )
    if not on_gpu:
        report.skip("CUDA graph replays", "CUDA graphs need a GPU (the CPU run was eager)")


def warm_up_prefills(engine, warm_up) -> None:
    """One request per prefill width the workload will use, so Triton compiles them now."""
    warm_up(engine)
    engine.generate([[5] * 24, [6] * 600], [greedy(2), greedy(2)])


def greedy(max_tokens: int):
    from bench.loom_runs import greedy_params

    return greedy_params(max_tokens)


def bench_hf(report: Report, device, params, workload, batch_size: int) -> None:
    from bench.gpu_bench import hf_throughput
    from bench.gpu_model import random_hf_llama

    on_gpu = device.type == "cuda"
    if on_gpu and report.remaining() < 120:
        report.skip("transformers generate", "the time budget is spent")
        return
    dtype = torch.bfloat16 if on_gpu else torch.float32
    try:
        model = random_hf_llama(params, device.type, dtype)
    except ImportError:
        report.skip("transformers generate", "transformers is not installed")
        return
    budget = min(150.0, report.remaining() - 60) if on_gpu else 60.0
    found = hf_throughput(model, workload, batch_size if on_gpu else 4, budget)
    report.record("hf", found)
    loom = report.results["loom_graphs"]
    full, head = loom["workload"], loom["hf_subset"]
    report.row(
        f"transformers generate, first {found['requests']} requests",
        f"{found['output_tok_s']:,.0f} output tok/s in {found['batches']} static batches of "
        f"{found['batch_size']}, {found['seconds']} s",
    )
    first = found["first_batch_output_tok_s"]
    report.row(
        f"Loom / transformers, the same first {head['requests']} requests",
        f"{head['output_tok_s'] / first:.1f}x ({head['output_tok_s']:,.0f} vs {first:,.0f} "
        "output tok/s)",
    )
    ratio = full["output_tok_s"] / found["output_tok_s"]
    report.row(
        f"Loom ({full['requests']} requests) / transformers",
        f"{ratio:.1f}x output tok/s",
        f">= {HF_GOAL}x",
        verdict(ratio >= HF_GOAL) if on_gpu else "smoke (CPU)",
    )


def bench_loom_eager(report: Report, device, params, workload) -> None:
    from bench.gpu_bench import decode_steps, loom_throughput
    from bench.gpu_model import random_llama_engine
    from bench.loom_runs import warm_up

    on_gpu = device.type == "cuda"
    if on_gpu and report.remaining() < 60:
        report.skip("decode steps, eager", "the time budget is spent")
        return
    dtype = torch.bfloat16 if on_gpu else torch.float32
    engine, worker = random_llama_engine(
        params, device.type, dtype, max_num_seqs=256, enforce_eager=True
    )
    warm_up_prefills(engine, warm_up)
    batch1 = decode_steps(engine, worker, 1, 128, 256 if on_gpu else 16)
    batch32 = decode_steps(engine, worker, 32, 128, 128 if on_gpu else 8)
    found = {"batch1": batch1, "batch32": batch32}
    graphs = report.results["loom_graphs"]
    for key in ("batch1", "batch32"):
        on, off = graphs[key]["engine_step_ms"], found[key]["engine_step_ms"]
        vs_graphs = f"; graphs {on:.2f} ms: {off / on:.2f}x faster with graphs" if on_gpu else ""
        name = key.replace("batch", "batch-")
        report.row(f"{name} decode step, eager", f"{off:.2f} ms{vs_graphs}")
    if not on_gpu or report.remaining() > 90:
        found["workload"] = full = loom_throughput(engine, worker, workload)
        report.row(
            f"Loom, {full['requests']} requests, eager",
            f"{full['output_tok_s']:,.0f} output tok/s in {full['seconds']} s "
            f"(graphs: {graphs['workload']['output_tok_s']:,.0f})",
        )
    else:
        report.skip("Loom workload, eager", "the time budget is spent")
    report.record("loom_eager", found)


def release() -> None:
    """Give back the GPU memory of models no longer referenced (graphs hold cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
