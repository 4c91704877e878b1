"""Prefix-aware routing on the shared-prefix workload, and the load margin that overrides it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import numpy as np

from client import Client
from frontend.embedded import ServerHandle
from loadtest.datasets import SampleRequest, Vocabulary, shared_prefix_requests
from loadtest.driver import DriverOptions, run_workload
from router.server import RouterHandle
from tests.router.conftest import decisions
from tests.server.conftest import engine_is_idle, make_engine, wait_until

# 8 prefixes of 256 tokens = 16 blocks each; 72 blocks per engine hold 4 of them and the
# requests running: the 8 fit the two caches together, not one.
NUM_KV_BLOCKS = 72


def shared_prefix_workload() -> list[SampleRequest]:
    """64 requests: 8 prefixes of 256 tokens, 8 requests each with 8 tokens of their own,
    shuffled (in order, round robin over two backends would keep each prefix on one)."""
    vocab = Vocabulary(512, frozenset({0, 1, 2}))
    rng = np.random.default_rng(1)
    requests = shared_prefix_requests(64, 256, 8, 8, 4, 0.0, vocab, rng)
    random.Random(1).shuffle(requests)
    return requests


def run_workload_through(
    policy: str,
    start_engine: Callable[..., ServerHandle],
    start_router: Callable[..., RouterHandle],
) -> tuple[int, RouterHandle, list[ServerHandle]]:
    engines = [start_engine(make_engine(num_kv_blocks=NUM_KV_BLOCKS)) for _ in range(2)]
    router = start_router(*(e.target for e in engines), policy=policy)
    requests = shared_prefix_workload()
    options = DriverOptions(max_concurrency=4, show_progress=False)
    results, _, _ = asyncio.run(
        run_workload(router.target, requests, [0.0] * len(requests), options,
                     np.random.default_rng(0))
    )  # fmt: skip
    assert [r.status for r in results] == ["OK"] * 64
    for engine in engines:
        wait_until(lambda e=engine: engine_is_idle(e.engine), 5.0, "engines idle")
    return sum(e.engine.stats().prefix_cache_hits for e in engines), router, engines


def test_prefix_routing_gets_far_more_cache_hits_than_round_robin(
    start_engine: Callable[..., ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    rr_hits, _, _ = run_workload_through("round_robin", start_engine, start_router)
    prefix_hits, router, engines = run_workload_through("prefix", start_engine, start_router)
    assert prefix_hits >= 1.4 * rr_hits, (prefix_hits, rr_hits)
    # New prefixes were spread: each backend became home to several of the 8.
    new_prefixes = [decisions(router, e.target, "prefix_miss") for e in engines]
    assert sum(new_prefixes) >= 8 and min(new_prefixes) >= 3, new_prefixes
    # At most one computed prefix per request that found none: hits are the rest.
    num_hit_requests = sum(decisions(router, e.target, "prefix_hit") for e in engines)
    assert num_hit_requests >= 64 - sum(new_prefixes) - 8


def test_a_busy_prefix_holder_loses_to_the_idle_backend_beyond_the_margin(
    start_engine: Callable[..., ServerHandle], start_router: Callable[..., RouterHandle]
) -> None:
    two_engines = [start_engine(make_engine(max_num_seqs=8)) for _ in range(2)]
    margin = 2  # requests: a quarter of max_num_seqs
    router = start_router(*(e.target for e in two_engines), prefix_load_margin=0.25)
    prompt = list(range(3, 3 + 100))
    with Client(router.target) as client:
        client.generate(prompt, max_tokens=2)
    [home] = [e for e in two_engines if e.engine.stats().prefix_cache_queries]
    [idle] = [e for e in two_engines if e is not home]
    home_backend = next(b for b in router.router.pool.backends if b.address == home.target)

    def route_one() -> ServerHandle:
        before = [e.engine.stats().prefix_cache_queries for e in (home, idle)]
        with Client(router.target) as client:
            client.generate(prompt + [7], max_tokens=2)
        after = [e.engine.stats().prefix_cache_queries for e in (home, idle)]
        [went] = [e for e, b, a in zip((home, idle), before, after, strict=True) if a > b]
        return went

    # Requests sent to the home engine directly: only its polled load shows them.
    with Client(home.target) as direct:
        streams = []
        for num_busy in (margin, margin + 1):
            while len(streams) < num_busy:
                streams.append(direct.generate_stream("Once", max_tokens=480, ignore_eos=True))
                next(streams[-1])
            wait_until(
                lambda n=num_busy: home_backend.estimated_load() == n,
                2.0,
                f"load {num_busy} polled",
            )
            went = route_one()
            # Within the margin the prefix wins; beyond it, the idle backend gets the request.
            assert went is (home if num_busy <= margin else idle), num_busy
        for stream in streams:
            stream.close()
    assert decisions(router, idle.target, "load_fallback") == 1
    assert decisions(router, home.target, "prefix_hit") == 1
