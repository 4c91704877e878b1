"""Scheduling overhead: `schedule()` + `update()` per step with a no-op worker.

N requests decode together (prompts already computed); each step the no-op worker samples
one token per request. Only the scheduler's two calls are timed, not the building of the fake
worker output. Prefix caching stays on, so full blocks are hashed as they fill, as in serving.

    python -m bench.bench_scheduler [--steps 200] [--sizes 64 256 1024] [--gc default|serving|off]

--gc default keeps Python's collector as a plain program has it; serving tunes it as `serve`
does (scheduler/gc_tuning.py); off pauses it while the steps are timed, so the p99 difference
is what its collections cost the loop.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

from bench.common import command_line, cpu_model, load_average, markdown_table, today
from contract.step import StepOutput
from scheduler.config import SchedulerConfig
from scheduler.gc_tuning import SERVING_THRESHOLDS, tune_gc_for_serving
from scheduler.request import Request, SamplingParams
from scheduler.scheduler import Scheduler, SchedulerOutput
from worker.config import CacheConfig

BLOCK_SIZE = 16
PROMPT_TOKENS = 128


def noop_output(out: SchedulerOutput, rng: random.Random) -> StepOutput:
    """What a worker would answer: one token for each request whose tokens are all computed."""
    req_ids, sampled = [], []
    for req in out.scheduled:
        req_ids.append(req.req_id)
        done = req.num_computed_tokens + out.step_input.num_scheduled_tokens[req.req_id]
        sampled.append([rng.randrange(3, 32000)] if done == len(req.all_token_ids) else [])
    return StepOutput(req_ids=req_ids, sampled_token_ids=sampled)


def measure(num_running: int, num_steps: int) -> dict[str, float]:
    rng = random.Random(num_running)
    max_tokens = num_steps + 2 * num_running  # outlives the warm-up, where decodes slow prefill
    blocks_per_req = -(-(PROMPT_TOKENS + max_tokens) // BLOCK_SIZE)
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=num_running, max_num_batched_tokens=max(2048, num_running)),
        CacheConfig(block_size=BLOCK_SIZE),
        num_blocks=num_running * blocks_per_req,
        max_model_len=PROMPT_TOKENS + max_tokens,
    )
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    for i in range(num_running):
        prompt = [rng.randrange(3, 32000) for _ in range(PROMPT_TOKENS)]
        sched.add_request(Request(f"r{i}", prompt, params, eos_ids=(2,)))
    # Prefill every prompt first: the measured steps are pure decode steps.
    while any(r.num_computed_tokens < len(r.all_token_ids) - 1 for r in sched.requests.values()):
        out = sched.schedule()
        sched.update(out, noop_output(out, rng))
    schedule_ms, update_ms = [], []
    for _ in range(num_steps):
        start = time.perf_counter()
        out = sched.schedule()
        scheduled = time.perf_counter()
        step_out = noop_output(out, rng)
        before_update = time.perf_counter()
        sched.update(out, step_out)
        end = time.perf_counter()
        assert len(out.scheduled) == num_running
        schedule_ms.append((scheduled - start) * 1e3)
        update_ms.append((end - before_update) * 1e3)
    total = [s + u for s, u in zip(schedule_ms, update_ms, strict=True)]
    return {
        "schedule_ms": statistics.median(schedule_ms),
        "update_ms": statistics.median(update_ms),
        "total_ms": statistics.median(total),
        "p99_ms": sorted(total)[int(0.99 * (len(total) - 1))],
        "us_per_req": statistics.median(total) * 1e3 / num_running,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument(
        "--gc",
        choices=["default", "serving", "off"],
        default="serving",
        help="the collector as a plain program has it, as `serve` tunes it, or paused",
    )
    args = parser.parse_args()
    if args.gc == "serving":
        tune_gc_for_serving()
    elif args.gc == "off":
        gc.disable()
    rows = []
    for size in args.sizes:
        r = measure(size, args.steps)
        rows.append(
            [size, r["schedule_ms"], r["update_ms"], r["total_ms"], r["p99_ms"], r["us_per_req"]]
        )
        print(f"{size} running: {r}", flush=True)
    header = [
        "running requests",
        "schedule() ms",
        "update() ms",
        "total ms (median)",
        "total ms (p99)",
        "µs per request",
    ]
    print()
    print(f"- Command: `{command_line()}`")
    print(f"- Machine: 2-core CPU ({cpu_model()}), no GPU; load average {load_average()}")
    gc_note = {
        "default": "garbage collector at Python's defaults",
        "serving": f"garbage collector as `serve` runs it (frozen start-up, thresholds "
        f"{SERVING_THRESHOLDS})",
        "off": "garbage collector off",
    }[args.gc]
    print(f"- Date: {today()}; {args.steps} decode steps per size; {gc_note}")
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
