"""Parallel sampling: a request with n > 1 runs as n sequences that share its prompt's blocks.

The request forks into n child requests, `REQ#0` .. `REQ#(n-1)`. The first (the leader) is
scheduled at once; the others wait until the leader's prompt is computed, so its full
blocks are in the prefix cache when they are admitted: they take those blocks (ref counts,
no copy) and compute only the tail of the prompt after the last full block. With a seed,
sequence i draws from (seed, i, position): sequence 0 from the request's own seed, exactly as
an n = 1 request would, the others from a seed derived from (seed, i).

Deltas go out under the request's id with the sequence's `index`; a sequence's finishing
delta says whether others still run, and the last one carries the request's usage: the
prompt counted once, the tokens of every sequence, and the leader's prefix-cache hit. An echo
request computes its prompt logprobs once, in the leader; the others skip that (and so may
use the prefix cache) and hand on the leader's.
"""

from __future__ import annotations

import dataclasses
import hashlib

from contract.sampling import MAX_SEED, SamplingParams
from scheduler.outputs import RequestDelta, Usage
from scheduler.request import Request, RequestStatus

SEPARATOR = "#"


def child_req_ids(req_id: str, n: int) -> list[str]:
    """The scheduler's ids for the sequences of a request ([req_id] when n is 1)."""
    return [req_id] if n == 1 else [f"{req_id}{SEPARATOR}{i}" for i in range(n)]


def child_seed(seed: int | None, index: int) -> int | None:
    """Sequence `index`'s seed: the request's own for sequence 0, else derived from both."""
    if seed is None or index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & MAX_SEED


@dataclasses.dataclass(slots=True)
class SequenceGroup:
    req_id: str
    sequences: list[Request]  # by index; sequences[0] is the leader
    held: list[Request]  # waiting for the leader's prompt to be in the cache
    num_unfinished: int
    num_completion_tokens: int = 0
    preemptions: dict[str, int] = dataclasses.field(default_factory=dict)  # of all sequences
    leader_usage: Usage | None = None
    echo: RequestDelta | None = None  # the leader's prompt logprobs, handed to the others
    index_of: dict[str, int] = dataclasses.field(default_factory=dict)
    echo_sent: set[int] = dataclasses.field(default_factory=set)

    @classmethod
    def fork(cls, req: Request) -> SequenceGroup:
        params = req.params
        sequences = []
        for index, child_id in enumerate(child_req_ids(req.req_id, params.n)):
            child_params: SamplingParams = dataclasses.replace(
                params, n=1, seed=child_seed(params.seed, index), echo=params.echo and index == 0
            )
            sequences.append(
                Request(
                    req_id=child_id,
                    prompt_token_ids=list(req.prompt_token_ids),
                    params=child_params,
                    eos_ids=req.eos_ids,
                    tenant=req.tenant,
                    priority=req.priority,
                    lora=req.lora,
                    arrival_time=req.arrival_time,
                    deadline=req.deadline,
                )
            )
        group = cls(req.req_id, sequences, sequences[1:], len(sequences))
        group.index_of = {seq.req_id: i for i, seq in enumerate(sequences)}
        return group

    @property
    def leader(self) -> Request:
        return self.sequences[0]

    def translate(self, delta: RequestDelta) -> RequestDelta:
        """A sequence's delta as the request's: its id, the sequence's index, the echo data
        the leader computed, and the usage of the whole request on its very last delta."""
        index = self.index_of[delta.req_id]
        delta.req_id = self.req_id
        delta.index = index
        if self.leader.params.echo:
            self._hand_on_echo(delta, index)
        if delta.finish_reason is None:
            return delta
        usage = delta.usage or Usage()
        self.num_completion_tokens += usage.completion_tokens
        for cause, count in delta.preemptions.items():
            self.preemptions[cause] = self.preemptions.get(cause, 0) + count
        delta.preemptions = dict(self.preemptions)
        if index == 0:
            self.leader_usage = usage
        self.num_unfinished -= 1
        if self.num_unfinished:
            delta.others_running = True
            delta.usage = None
            return delta
        leader = self.leader_usage or Usage()
        delta.usage = Usage(
            prompt_tokens=len(self.leader.prompt_token_ids),
            completion_tokens=self.num_completion_tokens,
            cached_prompt_tokens=leader.cached_prompt_tokens,
        )
        return delta

    def _hand_on_echo(self, delta: RequestDelta, index: int) -> None:
        """Keep the leader's prompt logprobs; give them to each other sequence's first
        delta that carries output (or ends it)."""
        if index == 0:
            if delta.prompt_logprobs is not None:
                self.echo = delta
            return
        if index in self.echo_sent or self.echo is None:
            return
        if delta.token_ids or delta.finish_reason is not None:
            delta.prompt_token_ids = self.echo.prompt_token_ids
            delta.prompt_logprobs = self.echo.prompt_logprobs
            delta.prompt_top_logprobs = self.echo.prompt_top_logprobs
            self.echo_sent.add(index)

    def release_held(self, leader_delta: RequestDelta) -> list[Request]:
        """The sequences to schedule now: all of them once the leader's prompt is computed
        (it gained a token) or the leader ended."""
        if not self.held or not (leader_delta.token_ids or leader_delta.finish_reason):
            return []
        released, self.held = self.held, []
        return released

    def abort_held(self) -> list[Request]:
        """End the sequences never scheduled (the request was aborted)."""
        aborted, self.held = self.held, []
        for seq in aborted:
            seq.finish(RequestStatus.FINISHED_ABORTED)  # never scheduled: nothing to free
        return aborted


class SequenceGroups:
    """The engine's requests with n > 1, by request id and by sequence id. Used on the engine
    loop's thread only."""

    def __init__(self) -> None:
        self._groups: dict[str, SequenceGroup] = {}
        self._by_sequence: dict[str, SequenceGroup] = {}

    @property
    def num_held(self) -> int:
        return sum(len(group.held) for group in self._groups.values())

    def start(self, req: Request) -> list[Request]:
        """What to schedule of a new request now: itself, or the leader of its sequences."""
        if req.params.n == 1:
            return [req]
        group = SequenceGroup.fork(req)
        self._groups[req.req_id] = group
        for seq in group.sequences:
            self._by_sequence[seq.req_id] = group
        return [group.leader]

    def abort(self, req_id: str) -> tuple[list[str], list[Request]] | None:
        """For a request with sequences: (the ids of those scheduled, those never scheduled,
        now aborted); None for any other id."""
        group = self._groups.get(req_id)
        if group is None:
            return None
        held = group.abort_held()
        held_ids = {seq.req_id for seq in held}
        scheduled = [seq.req_id for seq in group.sequences if seq.req_id not in held_ids]
        return scheduled, held

    def route(self, deltas: list[RequestDelta]) -> tuple[list[RequestDelta], list[Request]]:
        """The deltas as their requests' (sequence deltas translated), and the sequences that
        may be scheduled now."""
        released: list[Request] = []
        for delta in deltas:
            group = self._by_sequence.get(delta.req_id)
            if group is None:
                continue
            is_leader = delta.req_id == group.leader.req_id
            group.translate(delta)
            if is_leader:
                released += group.release_held(delta)
            if delta.finished:
                del self._groups[group.req_id]
                for seq in group.sequences:
                    del self._by_sequence[seq.req_id]
        return deltas, released
