"""Sends a workload to a Loom server and records what each request saw: the arrivals,
concurrency and cancellations (`drive`), and the gRPC sender (the OpenAI one is in
loadtest/openai_backend.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from loadtest.datasets import SampleRequest
from loadtest.metrics import OK, RequestResult
from loadtest.progress import ProgressBar
from loadtest.server_metrics import ServerTimeline, poll
from loadtest.tenants import TenantSpec
from loompb import serving_pb2, serving_pb2_grpc

# A stream that ends cleanly but says the request failed inside the server or was aborted
# there is not a success; name it like the gRPC status the server would use for it.
_FINISH_FAILURES = {
    serving_pb2.FINISH_REASON_ERROR: "INTERNAL",
    serving_pb2.FINISH_REASON_ABORT: "ABORTED",
}


@dataclass(slots=True)
class DriverOptions:
    max_concurrency: int | None = None  # requests in flight at most; None: no limit
    cancel_rate: float = 0.0  # share of requests the client cancels
    cancel_max_delay: float = 1.0  # cancel uniform(0, this) seconds after sending
    timeout: float | None = None  # per-request deadline in seconds
    api_keys: list[str] = field(default_factory=list)  # sent as `authorization: Bearer KEY`
    num_tenants: int | None = None  # spread requests over tenant-0 .. tenant-(N-1)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    show_progress: bool = True
    metrics_url: str | None = None  # the server's Prometheus /metrics, polled while running
    metrics_every_s: float = 0.25
    tenant_specs: list[TenantSpec] = field(default_factory=list)  # --tenant NAME:KEY:RATE
    request_tenants: list[int] = field(default_factory=list)  # request i's index in the specs


def tenant_of(index: int, options: DriverOptions) -> tuple[str, list[tuple[str, str]]]:
    """Request `index`'s tenant label and call metadata, round-robin over the tenants. With
    API keys each tenant is one key, labelled `key-<i>` (the server maps keys to its own
    tenant names); without, the tenant `tenant-<i>` is named in `x-loom-tenant`. With
    `--tenant` specs, a request belongs to the tenant whose arrival process sent it."""
    if options.tenant_specs:
        spec = options.tenant_specs[options.request_tenants[index]]
        return spec.name, spec.metadata
    if options.api_keys:
        slot = index % len(options.api_keys)
        return f"key-{slot}", [("authorization", f"Bearer {options.api_keys[slot]}")]
    if options.num_tenants:
        name = f"tenant-{index % options.num_tenants}"
        return name, [("x-loom-tenant", name)]
    return "", []


def build_request(sample: SampleRequest, options: DriverOptions) -> serving_pb2.GenerateRequest:
    sampling = serving_pb2.SamplingParams(
        max_tokens=sample.max_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        top_k=options.top_k,
        ignore_eos=sample.ignore_eos,
    )
    if sample.prompt_token_ids is not None:
        request = serving_pb2.GenerateRequest(
            prompt_token_ids=sample.prompt_token_ids, sampling=sampling
        )
    else:
        request = serving_pb2.GenerateRequest(prompt=sample.prompt, sampling=sampling)
    if sample.deadline_ms is not None:
        request.deadline_ms = sample.deadline_ms
    return request


async def _stream_one(
    stub: serving_pb2_grpc.GenerationStub,
    index: int,
    sample: SampleRequest,
    options: DriverOptions,
    cancel_after: float | None,
    run_start: float,
) -> RequestResult:
    tenant, metadata = tenant_of(index, options)
    start = time.perf_counter()
    result = RequestResult(
        index=index,
        start_time=start - run_start,
        prompt_len=sample.prompt_len,
        tenant=tenant,
        cancel_planned=cancel_after is not None,
        deadline_ms=sample.deadline_ms,
    )
    call = stub.GenerateStream(
        build_request(sample, options), metadata=metadata or None, timeout=options.timeout
    )
    canceller = None
    if cancel_after is not None:
        canceller = asyncio.get_running_loop().call_later(cancel_after, call.cancel)
    last_token_at = None
    try:
        async for message in call:
            now = time.perf_counter()
            if message.token_ids:
                if last_token_at is None:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last_token_at)
                last_token_at = now
                result.output_len += len(message.token_ids)
            if message.usage.prompt_tokens:
                result.prompt_len = message.usage.prompt_tokens
            if message.finish_reason in _FINISH_FAILURES:
                result.status = _FINISH_FAILURES[message.finish_reason]
                reason = serving_pb2.FinishReason.Name(message.finish_reason)
                result.error = f"finish_reason {reason}"
    except asyncio.CancelledError:
        # grpc.aio raises CancelledError from the stream when the call is cancelled; anything
        # else cancelling this task must propagate.
        if not call.cancelled():
            raise
        result.status, result.error = "CANCELLED", "cancelled by the client"
    except grpc.aio.AioRpcError as e:
        result.status, result.error = e.code().name, e.details() or ""
    finally:
        if canceller is not None:
            canceller.cancel()
    result.e2el = time.perf_counter() - start
    return result


async def run_workload(
    target: str,
    requests: Sequence[SampleRequest],
    arrivals: Sequence[float],
    options: DriverOptions,
    rng: np.random.Generator,
) -> tuple[list[RequestResult], float, ServerTimeline | None]:
    """Sends request i at `arrivals[i]` seconds after the start over gRPC; see `drive`."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)

        def send(index: int, cancel_after: float | None, run_start: float) -> Awaitable:
            return _stream_one(stub, index, requests[index], options, cancel_after, run_start)

        return await drive(len(requests), arrivals, options, rng, send)


# (request index, seconds after which the client cancels it or None, the run's start) ->
# what the client saw of it.
Sender = Callable[[int, float | None, float], Awaitable[RequestResult]]


async def drive(
    num: int,
    arrivals: Sequence[float],
    options: DriverOptions,
    rng: np.random.Generator,
    send: Sender,
) -> tuple[list[RequestResult], float, ServerTimeline | None]:
    """Sends request i at `arrivals[i]` seconds after the start (waiting for a slot when
    `max_concurrency` is reached) and returns every request's result, the run's duration
    (first send to last completion) and, with `metrics_url`, the server's own timeline."""
    planned = rng.random(num) < options.cancel_rate
    delays = rng.uniform(0.0, options.cancel_max_delay, size=num)
    limit = asyncio.Semaphore(options.max_concurrency) if options.max_concurrency else None
    progress = ProgressBar(num, enabled=options.show_progress)

    async def one(index: int) -> RequestResult:
        cancel_after = float(delays[index]) if planned[index] else None
        if limit is None:
            result = await send(index, cancel_after, run_start)
        else:
            async with limit:
                result = await send(index, cancel_after, run_start)
        progress.update(result.status == OK)
        return result

    run_start = time.perf_counter()
    stop_polling = asyncio.Event()
    poller = None
    if options.metrics_url:
        poller = asyncio.create_task(
            poll(options.metrics_url, run_start, stop_polling, options.metrics_every_s)
        )
    tasks = []
    for index in range(num):
        wait = run_start + arrivals[index] - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(index)))
    results = await asyncio.gather(*tasks)
    duration = time.perf_counter() - run_start
    stop_polling.set()
    timeline = await poller if poller is not None else None
    progress.close()
    return list(results), duration, timeline
