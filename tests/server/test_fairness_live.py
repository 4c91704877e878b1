"""Fair share on a live server over loopback: tenant a floods a server whose `max_num_seqs` it
saturates, tenant b asks for its share. The same load runs under fcfs and under fair."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable

import pytest

from client import AsyncClient
from frontend.embedded import ServerHandle
from scheduler.config import EngineStats
from serving.tenants import hash_key
from tests.server.conftest import engine_is_idle, make_engine, wait_until

MAX_NUM_SEQS = 4
NUM_FLOOD_STREAMS = 24  # a's streams in flight: 20 of them wait behind the 4 seats


def start(start_server, tmp_path, policy: str, b_weight: float) -> ServerHandle:
    path = tmp_path / f"tenants-{policy}-{b_weight}.toml"
    path.write_text(
        f'[tenants.a]\napi_key_sha256 = ["{hash_key("key-a")}"]\n\n'
        f'[tenants.b]\napi_key_sha256 = ["{hash_key("key-b")}"]\nweight = {b_weight}\n'
    )
    engine = make_engine(max_num_seqs=MAX_NUM_SEQS, queue_policy=policy)
    return start_server(engine, tenants=str(path))


def prompt(tenant: str, i: int) -> list[int]:
    """Distinct 8-token prompts, so nothing comes from the prefix cache."""
    base = 10 + (i * 8) % 400 + (0 if tenant == "a" else 5)
    return [1, *range(base, base + 7)]


async def closed_loop(
    client: AsyncClient, tenant: str, index: int, max_tokens: int, count: Callable[[int], None]
) -> None:
    """One stream after another until cancelled; `count` sees each message's tokens."""
    i = index
    while True:
        async for message in client.generate_stream(
            prompt(tenant, i), max_tokens=max_tokens, ignore_eos=True
        ):
            count(len(message.token_ids))
        i += 1000


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


async def stop(tasks: list[asyncio.Task]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# Fair-share charge of a's first MAX_NUM_SEQS requests once each has 8 of its 48 tokens: 8
# prompt tokens at 1 and 8 output tokens at 2 apiece.
A_UNDER_WAY = MAX_NUM_SEQS * (8 + 2 * 8)


def a_service(stats: EngineStats) -> float:
    usage = stats.tenants.get("a")
    return 0.0 if usage is None else usage.service


async def b_ttfts_under_flood(server: ServerHandle, num_b: int) -> list[float]:
    """a keeps 24 streams of 48 tokens in flight; b sends `num_b` requests one at a time."""
    async with (
        AsyncClient(server.target, api_key="key-a") as a,
        AsyncClient(server.target, api_key="key-b") as b,
    ):
        flood = [
            asyncio.create_task(closed_loop(a, "a", i, 48, lambda n: None))
            for i in range(NUM_FLOOD_STREAMS)
        ]
        stats = server.engine.stats
        saturated = NUM_FLOOD_STREAMS - MAX_NUM_SEQS - 2
        await until(lambda: stats().num_waiting >= saturated, 10.0, "a saturates")
        # And a's first requests are under way, past any quantum the tests set: queued alone,
        # they could share the first step with b's request, which then needs no seat of a's.
        await until(lambda: a_service(stats()) >= A_UNDER_WAY, 10.0, "a's requests run")
        ttfts = []
        for i in range(num_b):
            sent = time.perf_counter()
            first = None
            async for message in b.generate_stream(prompt("b", i), max_tokens=4, ignore_eos=True):
                if first is None and message.token_ids:
                    first = time.perf_counter() - sent
            ttfts.append(first)
        await stop(flood)
    return ttfts


async def token_shares(server: ServerHandle, warmup_s: float, window_s: float) -> float:
    """Both backlogged: a on 16 streams, b on 8. b's share of the tokens in the window."""
    counts = {"a": 0, "b": 0}
    counting = False

    def counter(tenant: str) -> Callable[[int], None]:
        def count(num_tokens: int) -> None:
            if counting:
                counts[tenant] += num_tokens

        return count

    async with (
        AsyncClient(server.target, api_key="key-a") as a,
        AsyncClient(server.target, api_key="key-b") as b,
    ):
        tasks = [asyncio.create_task(closed_loop(a, "a", i, 16, counter("a"))) for i in range(16)]
        tasks += [asyncio.create_task(closed_loop(b, "b", i, 16, counter("b"))) for i in range(8)]
        await asyncio.sleep(warmup_s)  # a fixed measurement window, not a synchronisation
        counting = True
        await asyncio.sleep(window_s)
        counting = False
        await stop(tasks)
    return counts["b"] / (counts["a"] + counts["b"])


def test_fair_gives_a_one_request_tenant_a_ttft_far_below_fcfs(start_server, tmp_path) -> None:
    servers = {p: start(start_server, tmp_path, p, b_weight=1.0) for p in ("fcfs", "fair")}

    async def both() -> dict[str, float]:  # one event loop for every grpc.aio channel
        return {p: statistics.median(await b_ttfts_under_flood(s, 6)) for p, s in servers.items()}

    medians = asyncio.run(both())
    # fcfs: b waits for a's whole queue (20 requests ahead, 5 rounds of the 4 seats); fair: for
    # one running request of a's to finish.
    assert medians["fair"] * 3 <= medians["fcfs"], medians
    for server in servers.values():
        wait_until(lambda s=server: engine_is_idle(s.engine), 10.0, "engine idle")


def test_with_both_backlogged_weight_2_gets_two_thirds_under_fair(start_server, tmp_path) -> None:
    servers = {p: start(start_server, tmp_path, p, b_weight=2.0) for p in ("fcfs", "fair")}

    async def both() -> dict[str, float]:
        return {p: await token_shares(s, warmup_s=0.5, window_s=1.5) for p, s in servers.items()}

    shares = asyncio.run(both())
    assert shares["fair"] == pytest.approx(2 / 3, abs=0.1), shares
    assert shares["fcfs"] == pytest.approx(1 / 3, abs=0.1), shares
    for server in servers.values():
        wait_until(lambda s=server: engine_is_idle(s.engine), 10.0, "engine idle")


def test_under_fair_b_takes_a_seat_from_a_and_operators_see_why(
    start_server, tmp_path, caplog
) -> None:
    from tests.server.test_metrics_and_auth import scrape, value

    caplog.set_level(logging.INFO, logger="loom.requests")
    path = tmp_path / "tenants.toml"
    path.write_text(
        f'[tenants.a]\napi_key_sha256 = ["{hash_key("key-a")}"]\n\n'
        f'[tenants.b]\napi_key_sha256 = ["{hash_key("key-b")}"]\n'
    )
    engine = make_engine(max_num_seqs=MAX_NUM_SEQS, queue_policy="fair", preemption_quantum=4)
    server = start_server(engine, tenants=str(path), metrics_port=0)
    asyncio.run(b_ttfts_under_flood(server, 3))
    wait_until(lambda: engine_is_idle(server.engine), 10.0, "engine idle")
    samples = scrape(server.metrics_port)
    # b's requests found a's in every seat and took one (unless one of a's happened to end
    # just then).
    assert value(samples, "loom:tenant_preemptions_total", tenant="a", cause="share") >= 1
    assert value(samples, "loom:tenant_preemptions_total", tenant="b", cause="share") == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "loom.requests"]
    assert any(" tenant=a " in line and "preempted=share:" in line for line in lines)
    assert not any(" tenant=b " in line and "preempted=" in line for line in lines)
