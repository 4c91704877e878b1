"""A soak: rounds of mixed calls (unary and streamed, several tenants, cancels, deadlines,
clients hanging up) against one server, each round followed by a check, on the server's own
/metrics, that it came back to idle: no request running or waiting and no KV block held by
a request (what the prefix cache retains is reported, not counted as held). The server's RSS
(`process_resident_memory_bytes`) is sampled over the run.

A call is lost when it ends in a way its fate does not allow: an unexpected status (a hung
call ends DEADLINE_EXCEEDED at its generous deadline), or an OK stream without a finish
reason (truncated). A soak passes when no call is lost and every round ends idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field

import grpc
import numpy as np

from loadtest.server_metrics import fetch_text, parse_series
from loadtest.soak_plan import (
    DISCONNECT,
    EXPECTED_STATUSES,
    SHED_STATUS,
    PlannedCall,
    SoakOptions,
    plan_call,
)
from loompb import serving_pb2, serving_pb2_grpc

RUNNING, WAITING = "loom:num_requests_running", "loom:num_requests_waiting"
BLOCKS_USED, BLOCKS = "loom:kv_cache_blocks_used", "loom:kv_cache_blocks"
PREFIX_BLOCKS, RSS = "loom:prefix_cache_blocks", "process_resident_memory_bytes"
SERIES = (RUNNING, WAITING, BLOCKS_USED, BLOCKS, PREFIX_BLOCKS, RSS)
UNSET = serving_pb2.FINISH_REASON_UNSPECIFIED
RSS_EVERY_S = 1.0


@dataclass(slots=True)
class CallResult:
    index: int
    streamed: bool
    fate: str
    tenant: str
    status: str = "OK"
    num_tokens: int = 0
    problem: str = ""  # why the call counts as lost; "" when it ended as its fate allows


@dataclass(slots=True)
class IdleCheck:
    """The server's series once a round's calls had all ended."""

    round: int
    idle: bool  # nothing running or waiting, no block held, within idle_timeout
    seconds_to_idle: float
    running: float
    waiting: float
    blocks_used: float
    blocks: float
    prefix_cache_blocks: float  # retained by the prefix cache, free to be reallocated
    rss_bytes: float


@dataclass(slots=True)
class SoakReport:
    calls: list[CallResult] = field(default_factory=list)
    idle_checks: list[IdleCheck] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (s, bytes)
    duration: float = 0.0

    @property
    def lost(self) -> list[CallResult]:
        return [call for call in self.calls if call.problem]

    @property
    def passed(self) -> bool:
        return not self.lost and all(check.idle for check in self.idle_checks)

    def by_status(self) -> dict[str, int]:
        return dict(Counter(call.status for call in self.calls).most_common())

    def by_fate(self) -> dict[str, int]:
        return dict(Counter(call.fate for call in self.calls).most_common())


async def run_soak(
    target: str,
    metrics_url: str,
    options: SoakOptions,
    vocab_size: int,
    max_model_len: int,
) -> SoakReport:
    rng = np.random.default_rng(options.seed)
    report = SoakReport()
    start = time.perf_counter()
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(_sample_rss(metrics_url, start, report, stop_sampling))
    limit = asyncio.Semaphore(options.concurrency)
    end_by = start + options.duration
    async with grpc.aio.insecure_channel(target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)

        async def bounded(plan: PlannedCall) -> CallResult | None:
            async with limit:
                if time.perf_counter() >= end_by:
                    return None  # the run's time is up: not sent
                return await _call(stub, target, plan)

        first = 0
        for number, size in enumerate(round_sizes(options.streams, options.rounds)):
            if time.perf_counter() >= end_by:
                break
            # Planned round by round, in one sequence of draws: a seed fixes the whole run.
            plans = [
                plan_call(i, options, vocab_size, max_model_len, rng)
                for i in range(first, first + size)
            ]
            first += size
            results = await asyncio.gather(*(bounded(plan) for plan in plans))
            report.calls.extend(r for r in results if r is not None)
            report.idle_checks.append(await wait_idle(metrics_url, options.idle_timeout, number))
    report.duration = time.perf_counter() - start
    stop_sampling.set()
    await sampler
    return report


def round_sizes(num_calls: int, num_rounds: int) -> list[int]:
    """Calls per round, as even as they divide: 10 over 3 -> [4, 3, 3]."""
    base, extra = divmod(num_calls, num_rounds)
    return [base + (i < extra) for i in range(num_rounds)]


async def _call(
    stub: serving_pb2_grpc.GenerationStub, target: str, plan: PlannedCall
) -> CallResult:
    result = CallResult(plan.index, plan.streamed, plan.fate, plan.tenant)
    try:
        if plan.fate == DISCONNECT:
            await _hang_up(target, plan, result)
        elif plan.streamed:
            await _stream(stub, plan, result)
        else:
            await _unary(stub, plan, result)
    except grpc.aio.AioRpcError as exc:
        result.status = exc.code().name
        if result.status not in EXPECTED_STATUSES[plan.fate] | {SHED_STATUS}:
            result.problem = f"ended {result.status}: {exc.details()}"
    return result


def _metadata(plan: PlannedCall) -> tuple[tuple[str, str], ...]:
    return (("x-loom-tenant", plan.tenant),)


async def _unary(
    stub: serving_pb2_grpc.GenerationStub, plan: PlannedCall, result: CallResult
) -> None:
    call = stub.Generate(plan.request, timeout=plan.timeout, metadata=_metadata(plan))
    canceller = _cancel_later(call, plan)
    try:
        reply = await call
    except asyncio.CancelledError:
        if not call.cancelled():
            raise
        result.status = "CANCELLED"
        return
    finally:
        if canceller is not None:
            canceller.cancel()
    result.num_tokens = len(reply.token_ids)
    _check_finished(reply.finish_reason, reply.usage.completion_tokens, plan, result)


class _HangUp(Exception):
    """The client of a disconnect fate leaves, mid-stream."""


async def _stream(
    stub: serving_pb2_grpc.GenerationStub, plan: PlannedCall, result: CallResult
) -> None:
    call = stub.GenerateStream(plan.request, timeout=plan.timeout, metadata=_metadata(plan))
    finish, completion, num_messages = UNSET, 0, 0
    try:
        async for message in call:
            result.num_tokens += len(message.token_ids)
            finish = message.finish_reason or finish
            completion = message.usage.completion_tokens or completion
            num_messages += 1
            if num_messages == plan.cancel_after_messages and not finish:
                if plan.fate == DISCONNECT:
                    raise _HangUp
                call.cancel()
    except asyncio.CancelledError:
        if not call.cancelled():
            raise
        result.status = "CANCELLED"
        return
    _check_finished(finish, completion, plan, result)


async def _hang_up(target: str, plan: PlannedCall, result: CallResult) -> None:
    """A client that goes away mid-stream: its own connection, closed under the call."""
    # A local subchannel pool: its own TCP connection, not one shared with the other calls.
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.insecure_channel(target, options=options) as own:
        try:
            await _stream(serving_pb2_grpc.GenerationStub(own), plan, result)
        except _HangUp:
            await own.close(grace=None)  # the connection goes; the server sees the hang-up
            result.status = "CANCELLED"


def _cancel_later(call: grpc.aio.Call, plan: PlannedCall) -> asyncio.TimerHandle | None:
    if plan.cancel_after is None:
        return None
    return asyncio.get_running_loop().call_later(plan.cancel_after, call.cancel)


def _check_finished(finish: int, completion: int, plan: PlannedCall, result: CallResult) -> None:
    """An OK call must say how it finished, and carry the tokens its usage counts."""
    max_tokens = plan.request.sampling.max_tokens
    if finish not in (serving_pb2.FINISH_REASON_STOP, serving_pb2.FINISH_REASON_LENGTH):
        result.problem = f"ended OK with finish reason {serving_pb2.FinishReason.Name(finish)}"
    elif completion != result.num_tokens or completion > max_tokens:
        result.problem = f"{result.num_tokens} tokens received, usage says {completion}"


async def wait_idle(metrics_url: str, timeout: float, number: int) -> IdleCheck:
    """Poll /metrics until nothing runs, waits or holds a block, or `timeout` passes."""
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    while True:
        text = await loop.run_in_executor(None, fetch_text, metrics_url)
        values = parse_series(text, SERIES)
        idle = values[RUNNING] == 0 and values[WAITING] == 0 and values[BLOCKS_USED] == 0
        waited = time.perf_counter() - start
        if idle or waited > timeout:
            return IdleCheck(
                number, idle, waited, values[RUNNING], values[WAITING], values[BLOCKS_USED],
                values[BLOCKS], values[PREFIX_BLOCKS], values[RSS],
            )  # fmt: skip
        await asyncio.sleep(0.05)  # the next poll of an external server, not a sync point


async def _sample_rss(
    metrics_url: str, start: float, report: SoakReport, stop: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    while True:
        try:
            text = await loop.run_in_executor(None, fetch_text, metrics_url)
        except OSError:
            pass  # a missed sample; the run goes on
        else:
            rss = parse_series(text, (RSS,))[RSS]
            report.rss_samples.append((time.perf_counter() - start, rss))
        if stop.is_set():
            return
        with contextlib.suppress(asyncio.TimeoutError):  # the next sample is due
            await asyncio.wait_for(stop.wait(), timeout=RSS_EVERY_S)
