"""Which backend a generation call goes to.

- `round_robin`: the next backend in turn.
- `least_loaded`: the fewest requests running + waiting (Backend.estimated_load).
- `prefix`: the backend holding the longest run of the prompt's leading blocks (its
  PrefixIndex), the one that served it most recently among equals, unless its load exceeds the
  least loaded backend's by more than its margin, `margin` times its max_num_seqs (so the
  margin scales with what a replica runs at once); then the least loaded. The chosen
  backend's index takes the prompt's blocks at once, so the next request with this prefix
  follows it there even before this one has finished.

A new prefix (no backend holds it) goes to the backend with the most room in its index among
those within the margin of the least loaded, so new prefixes spread over the backends instead
of piling on the first one. Remaining ties are broken in turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.prefix_hash import extend_block_hashes, num_lookup_blocks, root_hash
from router.backend import Backend


@dataclass(slots=True)
class PromptBlocks:
    """A prompt's token ids and their block hashes, computed once per block size. `scope` is
    the tenant whose root salts the hashes, as the engines salt theirs."""

    scope: str
    token_ids: list[int]
    _hashes: dict[int, list[bytes]] = field(default_factory=dict)

    def hashes(self, block_size: int) -> list[bytes]:
        """Those of the blocks an engine's prefix cache could serve."""
        hashes = self._hashes.get(block_size)
        if hashes is None:
            hashes = self._hashes[block_size] = self._chain(block_size, self.token_ids)
        return hashes

    def with_output(self, block_size: int, output_ids: list[int]) -> list[bytes]:
        """Prompt and output: what the engine has cached once the request has finished."""
        token_ids = self.token_ids + output_ids
        return self._chain(block_size, token_ids, start=list(self.hashes(block_size)))

    def _chain(
        self, block_size: int, token_ids: list[int], start: list[bytes] | None = None
    ) -> list[bytes]:
        num_blocks = num_lookup_blocks(len(token_ids), block_size)
        root = root_hash(self.scope)
        return extend_block_hashes(start or [], root, token_ids, block_size, num_blocks)


@dataclass(slots=True)
class Route:
    backend: Backend
    decision: str  # a label of loom:router_routing_decisions (router/metrics.py)
    matched_tokens: int = 0  # prompt tokens the chosen backend likely has cached


class Chooser:
    def __init__(self, policy: str, margin: float) -> None:
        self.policy = policy
        self.margin = margin  # a share of a backend's max_num_seqs
        self._turn = 0  # advances every choice: round robin, and the last tie-break
        self._tick = 0  # advances every time an index is touched

    def choose(self, candidates: list[Backend], prompt: PromptBlocks | None) -> Route | None:
        """None when there is no candidate. `prompt` is None when the prefix cannot help (echo
        requests skip the cache) or was not computed (other policies)."""
        if not candidates:
            return None
        self._turn += 1
        if self.policy == "round_robin":
            return Route(candidates[self._turn % len(candidates)], "round_robin")
        least = self._least_loaded(candidates)
        if self.policy == "least_loaded" or prompt is None:
            return Route(least, "least_loaded")
        route = self._by_prefix(candidates, prompt, least)
        index = route.backend.index
        if index is not None:
            self.touch(route.backend, prompt.hashes(index.block_size))
        return route

    def touch(self, backend: Backend, hashes: list[bytes]) -> None:
        """The backend computes, or reuses, these blocks now."""
        if backend.index is not None and hashes:
            self._tick += 1
            backend.index.add(hashes, self._tick)

    def margin_requests(self, backend: Backend) -> float:
        """How many more requests than the least loaded this backend may have."""
        max_num_seqs = backend.info.max_num_seqs if backend.info is not None else 0
        return self.margin * max(1, max_num_seqs)

    def _least_loaded(self, candidates: list[Backend]) -> Backend:
        n, turn = len(candidates), self._turn

        def key(item: tuple[int, Backend]) -> tuple[int, float, int]:
            i, backend = item
            fill = backend.index.fill if backend.index is not None else 0.0
            return backend.estimated_load(), fill, (i - turn) % n

        return min(enumerate(candidates), key=key)[1]

    def _most_room(self, candidates: list[Backend], least: Backend) -> Backend:
        """For a new prefix: of the backends within the margin of the least loaded, the one
        whose index is emptiest (the most room to cache it), so homes spread evenly."""
        bound = least.estimated_load() + self.margin_requests(least)
        n, turn = len(candidates), self._turn

        def key(item: tuple[int, Backend]) -> tuple[float, int, int]:
            i, backend = item
            fill = backend.index.fill if backend.index is not None else 0.0
            return fill, backend.estimated_load(), (i - turn) % n

        within = [(i, b) for i, b in enumerate(candidates) if b.estimated_load() <= bound]
        return min(within, key=key)[1]

    def _by_prefix(self, candidates: list[Backend], prompt: PromptBlocks, least: Backend) -> Route:
        best, best_tokens, best_tick = least, 0, -1
        for backend in candidates:
            index = backend.index
            if index is None:
                continue
            num_blocks, tick = index.match(prompt.hashes(index.block_size))
            tokens = num_blocks * index.block_size
            if (tokens, tick) > (best_tokens, best_tick):
                best, best_tokens, best_tick = backend, tokens, tick
        if best_tokens == 0:
            return Route(self._most_room(candidates, least), "prefix_miss")
        if best.estimated_load() - least.estimated_load() > self.margin_requests(best):
            return Route(least, "load_fallback")
        return Route(best, "prefix_hit", best_tokens)
