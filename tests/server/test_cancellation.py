"""Many concurrent streams; cancelled ones leave the engine within a second."""

from __future__ import annotations

import asyncio
import time

from client import AsyncClient
from frontend.embedded import ServerHandle
from loompb import serving_pb2
from tests.server.conftest import engine_is_idle, wait_until

NUM_STREAMS = 64
NUM_CANCELLED = 16
SHORT_TOKENS = 24
LONG_TOKENS = 400  # far more than the test lasts: these only end by cancellation


def num_finished(server: ServerHandle, finish_reason: str) -> float:
    value = server.frontend.metrics.registry.get_sample_value(
        "loom:request_finished_total",
        {"model": "stories260K", "tenant": "default", "finish_reason": finish_reason},
    )
    return value or 0.0


def num_aborted(server: ServerHandle) -> float:
    return num_finished(server, "abort")


def num_past_deadline(server: ServerHandle) -> float:
    return num_finished(server, "deadline")


async def run_streams(server: ServerHandle) -> tuple[list[list], float]:
    async with AsyncClient(server.target) as client:
        started = [asyncio.Event() for _ in range(NUM_STREAMS)]

        async def one(i: int) -> list[serving_pb2.GenerateResponse]:
            cancelled = i < NUM_CANCELLED
            deltas = []
            async for delta in client.generate_stream(
                f"Once upon a time {i}",
                max_tokens=LONG_TOKENS if cancelled else SHORT_TOKENS,
                temperature=0,
                ignore_eos=True,
            ):
                deltas.append(delta)
                started[i].set()
            return deltas

        tasks = [asyncio.create_task(one(i)) for i in range(NUM_STREAMS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 60)
        cancelled_at = time.monotonic()
        for task in tasks[:NUM_CANCELLED]:
            task.cancel()
        # Gone from the engine: its final "abort" delta is what the engine emits when the
        # scheduler drops the request and frees its blocks.
        while num_aborted(server) < NUM_CANCELLED:
            assert time.monotonic() - cancelled_at < 1.0, f"{num_aborted(server)} aborted"
            await asyncio.sleep(0.005)
        gone_after = time.monotonic() - cancelled_at
        results = await asyncio.gather(*tasks[NUM_CANCELLED:])
        return results, gone_after


def test_64_streams_with_16_cancelled(server: ServerHandle) -> None:
    results, gone_after = asyncio.run(run_streams(server))
    assert gone_after < 1.0
    assert len(results) == NUM_STREAMS - NUM_CANCELLED
    for deltas in results:
        assert sum(len(d.token_ids) for d in deltas) == SHORT_TOKENS
        assert deltas[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
    assert num_aborted(server) == NUM_CANCELLED
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "every block free")


def test_sync_client_leaving_a_stream_early_aborts_it(server: ServerHandle) -> None:
    from client import Client

    with Client(server.target) as client:
        for delta in client.generate_stream("Once", max_tokens=LONG_TOKENS, ignore_eos=True):
            assert delta.token_ids
            break  # the generator's cleanup cancels the call
    wait_until(lambda: num_aborted(server) == 1, 5.0, "the request aborted")
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "every block free")
