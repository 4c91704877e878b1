"""Where one step's time goes, per attention backend: the torch profiler over real steps.

    python -m bench.bench_step_profile            # writes its BENCHMARKS.md section
    python -m bench.bench_step_profile --no-write

Two step shapes of the 60M model: a decode-only step of 64 sequences (contexts drawn from
100-500), and a mixed step of 32 decodes plus a 512-token prefill chunk after 256 cached
tokens. Each runs through the worker as it serves (batch building, forward, logits and
sampling), first with the torch reference, then with the CPU kernels; the profiler's self CPU
time per operator is grouped into GEMMs, attention (gathers, SDPA, the kernel), elementwise
work and the rest.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import DEFAULT_MODEL_DIR, markdown_table, run_header, timed, write_section
from contract.step import NewRequest, SamplingOptions, StepInput
from worker import create_worker

SECTION = "Worker: where a step's time goes"
GROUPS = {
    "GEMMs": ("aten::mm", "aten::addmm", "aten::bmm"),
    "attention": ("loom::paged_attention", "aten::index_select", "aten::index_copy_",
                  "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::where"),
    "norms, RoPE, SiLU, residual": ("loom::add_rms_norm", "loom::rms_norm", "loom::silu_and_mul",
                                    "aten::rms_norm", "aten::_fused_rms_norm", "aten::pow",
                                    "aten::mean", "aten::rsqrt", "aten::mul", "aten::mul_",
                                    "aten::silu_", "aten::add_", "aten::add", "aten::sum",
                                    "aten::div_"),
    "sampling": ("aten::max", "aten::argmax", "aten::log_softmax", "aten::topk"),
}  # fmt: skip


def step_inputs(shape: str, rng: random.Random) -> list[NewRequest]:
    """Requests whose next step is the given shape: decodes have all but one token cached."""
    greedy = SamplingOptions(temperature=0.0)
    lengths = [rng.randint(100, 500) for _ in range(64 if shape == "decode" else 32)]
    news = []
    for i, n in enumerate(lengths):
        news.append(NewRequest(f"d{i}", [rng.randrange(3, 32000) for _ in range(n)], [], greedy,
                               n - 1))  # fmt: skip
    if shape == "mixed":
        prompt = [rng.randrange(3, 32000) for _ in range(768)]
        news.append(NewRequest("p", prompt, [], greedy, 256))
    return news


def profile_backend(model_dir: Path, backend: str, shape: str, repeats: int) -> dict:
    worker = create_worker(model=str(model_dir), device="cpu", num_kv_blocks=4096,
                           attention_backend=backend)  # fmt: skip
    rng = random.Random(0)
    news = step_inputs(shape, rng)
    free = list(range(4096))
    rng.shuffle(free)
    for new in news:
        new.block_ids = [free.pop() for _ in range(-(-len(new.prompt_token_ids) // 16))]
    chunk = {new.req_id: len(new.prompt_token_ids) - new.num_computed_tokens for new in news}

    def one_step() -> None:
        # The same step again: the requests come back new, their prefixes cached.
        worker.execute(StepInput(new=news, num_scheduled_tokens=chunk))
        worker.execute(StepInput(finished_req_ids=list(chunk)))

    for _ in range(2):
        one_step()
    wall = min(timed(one_step)[0] for _ in range(repeats))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            one_step()
    shares = dict.fromkeys([*GROUPS, "other"], 0.0)
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6 / repeats
        total += seconds
        group = next((g for g, names in GROUPS.items() if event.key in names), "other")
        shares[group] += seconds
    return {"wall": wall, "total": total, "shares": shares}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()
    rows = []
    with torch.inference_mode():
        for shape in ("decode", "mixed"):
            for backend in ("torch", "cpu"):
                r = profile_backend(args.model, backend, shape, args.repeats)
                shares = [f"{r['shares'][g] * 1e3:.1f} ({r['shares'][g] / r['total']:.0%})"
                          for g in [*GROUPS, "other"]]  # fmt: skip
                rows.append([shape, backend, r["wall"] * 1e3, *shares])
                print(rows[-1])
    header = ["step", "backend", "step ms (best)",
              *[f"{g} ms (share)" for g in [*GROUPS, "other"]]]  # fmt: skip
    body = (
        f"{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n\n"
        f"{run_header('cpu')}\n{markdown_table(header, rows)}\n\n"
        "Shares are of the profiler's self CPU time over all threads' operators, which runs "
        "a little above the step's wall time (profiling costs too).\n"
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
