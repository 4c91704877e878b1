"""The scheduler alone, with a no-op worker (no model, no torch): what `schedule()` +
`update()` cost per step (`python -m bench scheduler`), how much of the KV cache it
leaves empty (`python -m bench kv-waste`), and the deadline policy's goodput on a simulated
clock (`python -m bench deadline-sim`).

scheduler: N requests decode together (prompts already computed); each step the no-op worker
samples one token per request. Only the scheduler's two calls are timed, not the building of
the fake worker output. Prefix caching stays on, so full blocks are hashed as they fill, as
in serving. --gc default keeps Python's collector as a plain program has it; serving tunes it
as `serve` does (scheduler/gc_tuning.py); off pauses it while the steps are timed, so the
p99 difference is what its collections cost the loop.

kv-waste: a mixed workload (long and short prompts, outputs that end early at EOS) runs
through the real scheduler. After each `schedule()`, every running request holds
`len(block_ids) * block_size` slots, of which `num_computed_tokens + scheduled` hold K/V once
the step has run. Loom allocates blocks only as tokens arrive, so its waste should equal the
last-block remainder (at most block_size - 1 slots per request). For comparison, on the same
steps: what a system reserving each request's prompt + max_tokens, or the model's maximum
length, at admission would hold (the reservation schemes the vLLM paper measured).

deadline-sim: two tenants (8:1) send Poisson arrivals at twice what the seats complete, each
request 32 prompt tokens and 32 output tokens, EOS ignored, with a deadline drawn from 100 ms
to 5 s, for 6 s or 12 s (as the live overload run sends). The clock is simulated: a step takes
a fixed time plus a cost per scheduled token and per request in it (`STEP_COSTS`), times a
log-normal wobble (the noise of a shared machine), and the scheduler is told each step's time
as the engine tells it. Goodput: the share of requests finished by their deadline, under
`fcfs` (which ends a request once its deadline has passed) and under `deadline` for several
admission margins (scheduler/deadlines.py ADMISSION_MARGIN) and, at the default margin, without
the hold of recent arrivals on the batch (`RecentArrivals`); beside them, what EDF on a fluid
machine finishes at the best fixed batch size (`fluid_bound`): the ceiling of any order.
"""

from __future__ import annotations

import gc
import heapq
import math
import os
import random
import statistics
import time
from dataclasses import dataclass

import scheduler.deadlines as deadlines
from bench.common import (
    bench_parser,
    command_line,
    cpu_model,
    greedy_params,
    load_average,
    markdown_table,
    today,
)
from contract.step import StepOutput
from scheduler.config import SchedulerConfig
from scheduler.gc_tuning import SERVING_THRESHOLDS, tune_gc_for_serving
from scheduler.request import Request, RequestStatus
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
    params = greedy_params(max_tokens)
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


EOS = 2
MAX_MODEL_LEN = 2048


def kv_workload(num_requests: int, seed: int) -> list[tuple[list[int], int, int]]:
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


def kv_run(block_size: int, num_requests: int, arrivals_per_step: int) -> dict[str, float]:
    sched = Scheduler(
        # no prefix caching: every slot belongs to one request
        SchedulerConfig(max_num_seqs=128, max_num_batched_tokens=2048, enable_prefix_caching=False),
        CacheConfig(block_size=block_size),
        num_blocks=32768 // block_size,  # 32k token slots: enough pressure to preempt
        max_model_len=MAX_MODEL_LEN,
    )
    pending = kv_workload(num_requests, seed=block_size)
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
            params = greedy_params(max_tokens, ignore_eos=False)
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


def print_run(header: list[str], rows: list[list[object]], what: str) -> None:
    print()
    print(f"- Command: `{command_line()}`")
    machine = f"{os.cpu_count()}-core CPU ({cpu_model()}), no GPU"
    print(f"- Machine: {machine}; load average {load_average()}")
    print(f"- Date: {today()}; {what}")
    print()
    print(markdown_table(header, rows))


def scheduler_overhead(argv: list[str] | None = None) -> None:
    parser = bench_parser("scheduler", "schedule() + update() per decode step")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument(
        "--gc",
        choices=["default", "serving", "off"],
        default="serving",
        help="the collector as a plain program has it, as `serve` tunes it, or paused",
    )
    args = parser.parse_args(argv)
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
    header = ["running requests", "schedule() ms", "update() ms", "total ms (median)",
              "total ms (p99)", "µs per request"]  # fmt: skip
    gc_note = {
        "default": "garbage collector at Python's defaults",
        "serving": f"garbage collector as `serve` runs it (frozen start-up, thresholds "
        f"{SERVING_THRESHOLDS})",
        "off": "garbage collector off",
    }[args.gc]
    print_run(header, rows, f"{args.steps} decode steps per size; {gc_note}")


def kv_waste(argv: list[str] | None = None) -> None:
    parser = bench_parser("kv-waste", "the share of allocated KV slots that hold no token")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--arrivals-per-step", type=int, default=2)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 32])
    args = parser.parse_args(argv)
    rows = []
    for block_size in args.block_sizes:
        r = kv_run(block_size, args.requests, args.arrivals_per_step)
        print(f"block size {block_size}: {r}", flush=True)
        rows.append([block_size, r["steps"], r["preemptions"], f"{100 * r['waste']:.2f}%",
                     f"{100 * r['remainder']:.2f}%", f"{100 * r['reserve_max_tokens']:.1f}%",
                     f"{100 * r['reserve_max_len']:.1f}%"])  # fmt: skip
    header = ["block size", "steps", "preemptions", "Loom: empty share of allocated slots",
              "last-block remainder", "reserve prompt+max_tokens",
              f"reserve max length ({MAX_MODEL_LEN})"]  # fmt: skip
    print_run(header, rows, f"{args.requests} requests, {args.arrivals_per_step} arrive per step")


DEADLINES_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SIM_TOKENS = 32  # each request's prompt and output


@dataclass(frozen=True)
class StepCost:
    """A simulated step's seconds: fixed + per scheduled token + per request in the step,
    times a log-normal wobble of sigma `wobble` (the noise of a shared machine)."""

    fixed: float
    per_token: float
    per_row: float
    wobble: float

    def mean(self, num_tokens: int, num_rows: int) -> float:
        noise = math.exp(self.wobble**2 / 2)  # the log-normal's mean
        return (self.fixed + self.per_token * num_tokens + self.per_row * num_rows) * noise

    def decode_seconds(self, seats: int) -> float:
        """A request's seconds on a seat in a batch of `seats` decoding requests."""
        return SIM_TOKENS * self.mean(seats, seats)


# "engine": the worker's compute dominates (a token costs 20 µs beside a step's 2 ms);
# "served": the live server on two shared cores, where each request in a step costs its
# streaming (fitted to the capacities of BENCHMARKS.md's overload run: 44.1 requests/s on 4
# seats, 132.2 on 256, 32 tokens each).
STEP_COSTS = {"engine": (2e-3, 20e-6, 0.0), "served": (1.92e-3, 0.0, 0.229e-3)}


def arrivals_at_overload(
    cost: StepCost, seats: int, seed: int, seconds: float
) -> list[tuple[float, str, float]]:
    """(time, tenant, deadline s): Poisson arrivals at twice what full seats complete."""
    rng = random.Random(seed)
    rate = 2 * seats / cost.decode_seconds(seats)
    arrivals, t = [], rng.expovariate(rate)
    while t < seconds:
        arrivals.append((t, "a" if rng.random() < 8 / 9 else "b", rng.choice(DEADLINES_S)))
        t += rng.expovariate(rate)
    return arrivals


def fluid_bound(arrivals: list[tuple[float, str, float]], cost: StepCost, seats: int) -> float:
    """Of the arrivals, the share that EDF on a fluid machine finishes in time, at the best
    fixed batch size up to `seats`, every step at its mean time: one request starts every
    `decode_seconds(batch) / batch` (plus its prefill), each must start by its deadline less
    `decode_seconds(batch)`. Not a proof (a schedule that varies its batch may do better), an
    estimate of what any order can get out of the seats."""
    best = 0
    for batch in sorted({min(2**k, seats) for k in range(seats.bit_length() + 1)}):
        latency = cost.decode_seconds(batch)
        prefill = (SIM_TOKENS - 1) * (cost.mean(1, 0) - cost.mean(0, 0))  # beyond a decode's
        gap = latency / batch + prefill
        pending: list[float] = []  # latest starts of the released requests
        met, t, k = 0, 0.0, 0
        while k < len(arrivals) or pending:
            if not pending and arrivals[k][0] > t:
                t = arrivals[k][0]
            while k < len(arrivals) and arrivals[k][0] <= t:
                heapq.heappush(pending, arrivals[k][0] + arrivals[k][2] - latency)
                k += 1
            while pending and pending[0] < t:
                heapq.heappop(pending)
            if pending:
                heapq.heappop(pending)
                met += 1
                t += gap
        best = max(best, met)
    return best / len(arrivals)


# The scheduler's own settings, read before any run changes them (each run sets its own).
ADMISSION_MARGIN = deadlines.ADMISSION_MARGIN
ARRIVAL_WINDOW = deadlines.ARRIVAL_WINDOW


def simulated_goodput(
    policy: str,
    seats: int,
    margin: float,
    seed: int,
    seconds: float,
    cost: StepCost,
    arrivals_hold: bool = True,
) -> float:
    """The share of the arrivals finished by their deadline, on a simulated clock;
    `arrivals_hold` False: no recent arrival holds the batch (scheduler/deadlines.py)."""
    deadlines.ADMISSION_MARGIN = margin
    deadlines.ARRIVAL_WINDOW = ARRIVAL_WINDOW if arrivals_hold else -math.inf
    rng = random.Random(seed + 1000)
    config = SchedulerConfig(max_num_seqs=seats, queue_policy=policy)
    sched = Scheduler(config, CacheConfig(block_size=BLOCK_SIZE), 100_000, 4096)
    now = [0.0]
    sched.clock = lambda: now[0]
    arrivals = arrivals_at_overload(cost, seats, seed, seconds)
    reqs, ends, k = [], {}, 0
    while k < len(arrivals) or sched.has_unfinished():
        while k < len(arrivals) and arrivals[k][0] <= now[0]:
            arrived, tenant, deadline = arrivals[k]
            prompt = [3 + (7 * k + i) % 500 for i in range(SIM_TOKENS)]
            req = Request(f"r{k}", prompt, greedy_params(SIM_TOKENS), (2,), tenant=tenant)
            req.deadline = arrived + deadline
            sched.add_request(req)
            reqs.append(req)
            k += 1
        out = sched.schedule()
        num_tokens = sum(out.step_input.num_scheduled_tokens.values())
        if num_tokens:
            base = cost.fixed + cost.per_token * num_tokens + cost.per_row * len(out.scheduled)
            took = base * rng.lognormvariate(0, cost.wobble)
            now[0] += took
            sched.observe_step_time(took)
        elif k < len(arrivals):
            now[0] = max(now[0], arrivals[k][0])  # idle until the next arrival
        for req in sched.update(out, noop_output(out, rng)):
            ends[req.req_id] = now[0]
    met = sum(
        r.status is RequestStatus.FINISHED_LENGTH and ends[r.req_id] <= r.deadline for r in reqs
    )
    return met / len(reqs)


def deadline_sim(argv: list[str] | None = None) -> None:
    parser = bench_parser("deadline-sim", "the deadline policy's goodput, simulated overload")
    parser.add_argument(
        "--cost", choices=sorted(STEP_COSTS), nargs="+", default=["engine", "served"]
    )
    parser.add_argument("--seats", type=int, nargs="+", default=[4, 64, 256])
    parser.add_argument("--margins", type=float, nargs="+", default=[0.5])
    parser.add_argument("--wobble", type=float, default=0.3, help="log-normal sigma of a step")
    parser.add_argument(
        "--seconds", type=float, nargs="+", default=[6.0, 12.0], help="of arrivals"
    )
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for name in args.cost:
        cost = StepCost(*STEP_COSTS[name], args.wobble)
        for seats in args.seats:
            for seconds in args.seconds:
                row = sim_row(cost, seats, seconds, args.seeds, args.margins)
                rows.append([name, seats, f"{seconds:g}", *row])
                print(rows[-1], flush=True)
    header = ["step cost", "seats", "arrivals s", "fcfs goodput", "deadline, no arrivals hold",
              *(f"deadline, margin {m:g}" for m in args.margins),
              "fluid EDF, best batch"]  # fmt: skip
    print_run(header, rows, f"means of {args.seeds} seeds, step wobble sigma {args.wobble:g}")


def sim_row(
    cost: StepCost, seats: int, seconds: float, seeds: int, margins: list[float]
) -> list[object]:
    def mean_goodput(policy: str, margin: float, hold: bool = True) -> float:
        return statistics.mean(
            simulated_goodput(policy, seats, margin, seed, seconds, cost, hold)
            for seed in range(seeds)
        )

    fcfs = mean_goodput("fcfs", 0.0)
    row: list[object] = [fcfs]
    unheld = mean_goodput("deadline", ADMISSION_MARGIN, hold=False)
    row.append(f"{unheld:.3f} ({unheld / fcfs:.2f}x)")
    for margin in margins:
        goodput = mean_goodput("deadline", margin)
        row.append(f"{goodput:.3f} ({goodput / fcfs:.2f}x)")
    bound = statistics.mean(
        fluid_bound(arrivals_at_overload(cost, seats, seed, seconds), cost, seats)
        for seed in range(seeds)
    )
    row.append(f"{bound:.3f} ({bound / fcfs:.2f}x)")
    return row
