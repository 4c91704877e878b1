"""KV-cache waste: the share of allocated KV slots that hold no token, averaged over steps.

A mixed workload (long and short prompts, outputs that end early at EOS) runs through the
real scheduler with a no-op worker. After each `schedule()`, every running request holds
`len(block_ids) * block_size` slots, of which `num_computed_tokens + scheduled` hold K/V once
the step has run. Loom allocates blocks only as tokens arrive, so its waste should equal the
last-block remainder (at most block_size - 1 slots per request). For comparison, on the same
steps: what a system reserving each request's prompt + max_tokens, or the model's maximum
length, at admission would hold (the reservation schemes the vLLM paper measured).

    python -m bench.bench_kv_waste [--requests 400] [--block-sizes 16 32]
"""

from __future__ import annotations

import argparse
import random

from bench.common import command_line, cpu_model, load_average, markdown_table, today
from contract.step import StepOutput
from scheduler.config import SchedulerConfig
from scheduler.request import Request, SamplingParams
from scheduler.scheduler import Scheduler
from worker.config import CacheConfig

EOS = 2
MAX_MODEL_LEN = 2048


def workload(num_requests: int, seed: int) -> list[tuple[list[int], int, int]]:
    """(prompt, max_tokens, tokens actually generated before EOS) per request: log-normal
    prompt and output lengths, as chat traces show (many short, a long tail)."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(num_requests):
        num_prompt = min(max(int(rng.lognormvariate(5.0, 1.0)), 4), 1500)
        max_tokens = min(rng.choice([64, 256, 512, 1024]), MAX_MODEL_LEN - num_prompt)
        num_output = min(max(int(rng.lognormvariate(4.5, 1.0)), 1), max_tokens)
        prompt = [rng.randrange(3, 32000) for _ in range(num_prompt)]
        reqs.append((prompt, max_tokens, num_output))
    return reqs


def run(block_size: int, num_requests: int, arrivals_per_step: int) -> dict[str, float]:
    sched = Scheduler(
        SchedulerConfig(max_num_seqs=128, max_num_batched_tokens=2048),
        # every slot belongs to one request
        CacheConfig(block_size=block_size, enable_prefix_caching=False),
        num_blocks=32768 // block_size,  # 32k token slots: enough pressure to preempt
        max_model_len=MAX_MODEL_LEN,
    )
    pending = workload(num_requests, seed=block_size)
    stop_after: dict[str, int] = {}
    rng = random.Random(1)
    sums = {
        "allocated": 0,
        "held": 0,
        "remainder": 0,
        "reserve_max_tokens": 0,
        "reserve_max_len": 0,
    }
    num_steps = 0
    next_id = 0
    while pending or sched.has_unfinished():
        for prompt, max_tokens, num_output in pending[:arrivals_per_step]:
            req_id = f"r{next_id}"
            next_id += 1
            stop_after[req_id] = num_output
            params = SamplingParams(max_tokens=max_tokens)
            sched.add_request(Request(req_id, prompt, params, (EOS,)))
        del pending[:arrivals_per_step]

        out = sched.schedule()
        scheduled = out.step_input.num_scheduled_tokens
        for req in sched.running:
            held = req.num_computed_tokens + scheduled.get(req.req_id, 0)
            allocated = len(req.block_ids) * block_size
            sums["allocated"] += allocated
            sums["held"] += held
            sums["remainder"] += -held % block_size
            assert allocated - held == -held % block_size, "a block was allocated ahead of need"
            sums["reserve_max_tokens"] += len(req.prompt_token_ids) + req.params.max_tokens
            sums["reserve_max_len"] += MAX_MODEL_LEN
        num_steps += 1

        step_out = StepOutput()
        for req in out.scheduled:
            step_out.req_ids.append(req.req_id)
            done = req.num_computed_tokens + scheduled[req.req_id] == len(req.all_token_ids)
            if not done:
                step_out.sampled_token_ids.append([])
                continue
            last = len(req.output_token_ids) + 1 >= stop_after[req.req_id]
            step_out.sampled_token_ids.append([EOS if last else rng.randrange(3, 32000)])
        sched.update(out, step_out)
    held = sums["held"]
    return {
        "steps": num_steps,
        "preemptions": sched.num_preemptions,
        "waste": 1 - held / sums["allocated"],
        "remainder": sums["remainder"] / sums["allocated"],
        "reserve_max_tokens": 1 - held / sums["reserve_max_tokens"],
        "reserve_max_len": 1 - held / sums["reserve_max_len"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--arrivals-per-step", type=int, default=2)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args()
    rows = []
    for block_size in args.block_sizes:
        r = run(block_size, args.requests, args.arrivals_per_step)
        print(f"block size {block_size}: {r}", flush=True)
        rows.append(
            [
                block_size,
                r["steps"],
                r["preemptions"],
                f"{100 * r['waste']:.2f}%",
                f"{100 * r['remainder']:.2f}%",
                f"{100 * r['reserve_max_tokens']:.1f}%",
                f"{100 * r['reserve_max_len']:.1f}%",
            ]
        )
    header = [
        "block size",
        "steps",
        "preemptions",
        "Loom: empty share of allocated slots",
        "last-block remainder",
        "reserve prompt+max_tokens",
        f"reserve max length ({MAX_MODEL_LEN})",
    ]
    print()
    print(f"- Command: `{command_line()}`")
    print(f"- Machine: 2-core CPU ({cpu_model()}), no GPU; load average {load_average()}")
    print(f"- Date: {today()}; {args.requests} requests, {args.arrivals_per_step} arrive per step")
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
