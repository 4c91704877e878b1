"""The router's prefix index and choices, without servers: its hashes are the engine's, its
index evicts as the engine's cache does, and each policy picks what it says."""

from __future__ import annotations

from loompb import serving_pb2
from router.backend import Backend, BackendState
from router.policy import Chooser, PromptBlocks
from router.prefix_index import PrefixIndex
from scheduler import SamplingParams
from scheduler.request import Request
from tests.scheduler.helpers import EOS, ContractWorker, make_scheduler, run_to_completion
from tests.server.conftest import make_engine


def cached_hashes(pool) -> set[bytes]:
    return {h for h in pool.block_hashes if h is not None}


def test_the_hashes_are_those_the_engine_caches() -> None:
    engine = make_engine()
    prompt = list(range(3, 3 + 50))  # 16-token blocks: 3 full blocks, 2 tokens over
    [out] = engine.generate([prompt], SamplingParams(max_tokens=20, temperature=0))
    blocks = PromptBlocks("default", prompt)
    assert len(blocks.hashes(16)) == 3
    # Prompt + output: 70 tokens, 69 computed, 4 full blocks cached.
    with_output = blocks.with_output(16, out.token_ids)
    assert with_output[:3] == blocks.hashes(16) and len(with_output) == 4
    assert cached_hashes(engine.scheduler.kv.pool) == set(with_output)


def test_the_hashes_are_salted_per_tenant_as_the_engine_salts_them() -> None:
    sched = make_scheduler(num_blocks=16, block_size=4)
    prompt = list(range(10, 21))  # 11 tokens
    sched.add_request(Request("a", prompt, SamplingParams(max_tokens=2), [EOS], tenant="acme"))
    run_to_completion(sched, ContractWorker(block_size=4))
    output = [3 + 11, 3 + 12]  # ContractWorker samples 3 + the position
    # 11 + 2 tokens, 12 computed: 3 full blocks.
    expected = PromptBlocks("acme", prompt).with_output(4, output)
    assert len(expected) == 3 and cached_hashes(sched.kv.pool) == set(expected)
    assert set(PromptBlocks("bolt", prompt).hashes(4)).isdisjoint(cached_hashes(sched.kv.pool))


def test_the_index_matches_leading_blocks_and_evicts_tails_first() -> None:
    index = PrefixIndex(block_size=4, capacity=5)
    a, b = [bytes([1, i]) for i in range(3)], [bytes([2, i]) for i in range(3)]
    index.add(a, tick=1)
    assert index.match(a) == (3, 1)
    assert index.match(a[:1] + b[1:]) == (1, 1)
    assert index.match(b) == (0, -1)
    index.add(b, tick=2)  # 6 blocks into 5: a's tail goes, its head stays
    assert len(index) == 5 and index.fill == 1.0
    assert index.match(a) == (2, 1)
    assert index.match(b) == (3, 2)
    index.clear()
    assert index.match(b) == (0, -1)


def backend(name: str, running: int = 0, capacity: int = 64) -> Backend:
    """Runs 8 requests at once: a margin of 0.25 is 2 requests."""
    load = serving_pb2.Load(num_requests_running=running, num_kv_blocks=capacity)
    info = serving_pb2.ModelInfo(block_size=4, num_kv_blocks=capacity, max_num_seqs=8)
    index = PrefixIndex(4, capacity)
    return Backend(name, None, None, BackendState.UP, info=info, load=load, index=index)


def test_prefix_goes_to_the_longest_match_then_the_most_recent() -> None:
    a, b, c = backend("a"), backend("b"), backend("c")
    chooser = Chooser("prefix", margin=0.25)
    long, short = PromptBlocks("t", list(range(40))), PromptBlocks("t", list(range(12)) + [99] * 20)
    chooser.touch(a, short.hashes(4))  # the first 3 blocks of `long` too
    chooser.touch(b, long.hashes(4))
    route = chooser.choose([a, b, c], long)
    assert (route.backend, route.decision, route.matched_tokens) == (b, "prefix_hit", 36)
    chooser.touch(c, short.hashes(4))  # c served the shorter prefix after a did
    route = chooser.choose([a, b, c], PromptBlocks("t", list(range(12)) + [7] * 8))
    assert (route.backend, route.decision, route.matched_tokens) == (c, "prefix_hit", 12)
    # Another tenant's same tokens match nothing.
    assert chooser.choose([a, b, c], PromptBlocks("u", list(range(40)))).decision == "prefix_miss"


def test_the_margin_sends_a_hit_to_the_least_loaded() -> None:
    busy, idle = backend("busy", running=3), backend("idle")
    prompt = PromptBlocks("t", list(range(40)))
    chooser = Chooser("prefix", margin=0.375)  # 3 of 8
    chooser.touch(busy, prompt.hashes(4))
    assert chooser.choose([busy, idle], prompt).backend is busy  # 3 more: within the margin
    busy.load.num_requests_waiting = 1
    route = chooser.choose([busy, idle], prompt)
    assert (route.backend, route.decision) == (idle, "load_fallback")
    # Now both have it; the idle one served it last.
    assert chooser.choose([busy, idle], prompt).backend is idle


def test_new_prefixes_spread_by_room_within_the_margin() -> None:
    a, b = backend("a", running=1), backend("b")
    chooser = Chooser("prefix", margin=0.25)
    homes = []
    for i in range(6):
        route = chooser.choose([a, b], PromptBlocks("t", [i] * 17))  # 4 blocks each
        assert route.decision == "prefix_miss"
        homes.append(route.backend.address)
    assert homes.count("a") == homes.count("b") == 3
    a.load.num_requests_running = 5  # beyond the margin: load decides, not room
    assert chooser.choose([a, b], PromptBlocks("t", [9] * 17)).backend is b


def test_round_robin_and_least_loaded() -> None:
    a, b, c = backend("a"), backend("b", running=2), backend("c", running=1)
    chooser = Chooser("round_robin", margin=0)
    assert [chooser.choose([a, b, c], None).backend.address for _ in range(6)] == list("bcabca")
    chooser = Chooser("least_loaded", margin=0)
    assert {chooser.choose([a, b, c], None).backend.address for _ in range(4)} == {"a"}
    assert chooser.choose([b, c], None).decision == "least_loaded"
    assert chooser.choose([], None) is None
