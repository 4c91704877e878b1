"""Small builders for scheduler tests that run without a model."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from contract.sampling import SamplingParams
from contract.step import PromptLogprobs, StepInput, StepOutput
from scheduler.config import SchedulerConfig
from scheduler.request import Request
from scheduler.scheduler import Scheduler, SchedulerOutput
from worker.config import CacheConfig

EOS = 2
VOCAB = 512


def make_request(
    req_id: str,
    num_prompt_tokens: int,
    max_tokens: int = 16,
    first_token: int = 3,
    **params: object,
) -> Request:
    """A request whose prompt counts up from `first_token` (never EOS)."""
    prompt = [3 + (first_token - 3 + i) % (VOCAB - 3) for i in range(num_prompt_tokens)]
    return Request(req_id, prompt, SamplingParams(max_tokens=max_tokens, **params), eos_ids=(EOS,))


def make_scheduler(
    num_blocks: int = 64,
    block_size: int = 4,
    max_model_len: int = 4096,
    enable_prefix_caching: bool = True,
    **config: object,
) -> Scheduler:
    """A scheduler over `num_blocks` blocks; `config` holds SchedulerConfig fields."""
    settings = SchedulerConfig(enable_prefix_caching=enable_prefix_caching, **config)
    return Scheduler(settings, CacheConfig(block_size=block_size), num_blocks, max_model_len)


def token_of_context(token_ids: list[int]) -> int:
    """A token that depends on every token before it, as a model's does: a request resumed
    with a token lost, doubled or out of place generates something else from there on."""
    digest = zlib.crc32(b"".join(t.to_bytes(4, "little") for t in token_ids))
    return 3 + digest % (VOCAB - 3)


@dataclass
class _WorkerRequest:
    token_ids: list[int]
    block_ids: list[int]
    num_computed: int
    echo: bool


@dataclass
class ContractWorker:
    """Plays the worker's side of contract/step.py and checks every rule of it: ids new or
    known, blocks enough for the computed tokens and never shared between live requests
    unless the prefix cache handed them out for identical tokens, a sample exactly when
    every known token is computed. Sampled tokens come from `next_token`, or from
    `from_context` (the tokens the worker holds for the request)."""

    block_size: int
    next_token: object = None  # (req_id, position) -> token id
    from_context: Callable[[list[int]], int] | None = None
    requests: dict[str, _WorkerRequest] = field(default_factory=dict)
    steps: list[StepInput] = field(default_factory=list)
    # slot -> (req_id, position, token id) of the K/V written there last
    slot_owner: dict[int, tuple[str, int, int]] = field(default_factory=dict)

    def _slot(self, state: _WorkerRequest, pos: int) -> int:
        # block_table [7, 2], block_size 4, position 5 -> slot 2*4 + 1 = 9
        return state.block_ids[pos // self.block_size] * self.block_size + pos % self.block_size

    def execute(self, step: StepInput) -> StepOutput:
        self.steps.append(step)
        for req_id in step.finished_req_ids:
            self.requests.pop(req_id, None)
        for new in step.new:
            assert new.req_id not in self.requests, f"{new.req_id} sent twice"
            assert 0 <= new.num_computed_tokens < len(new.prompt_token_ids)
            state = _WorkerRequest(
                list(new.prompt_token_ids),
                list(new.block_ids),
                new.num_computed_tokens,
                new.sampling.echo,
            )
            self.requests[new.req_id] = state
            for pos in range(new.num_computed_tokens):  # a prefix-cache hit holds our tokens
                owner = self.slot_owner[self._slot(state, pos)]
                assert owner[1:] == (pos, state.token_ids[pos]), (new.req_id, pos, owner)
        for running in step.running:
            state = self.requests[running.req_id]
            state.token_ids.extend(running.new_token_ids)
            state.block_ids.extend(running.new_block_ids)
        holders: dict[int, list[str]] = {}
        for req_id, state in self.requests.items():
            for block_id in state.block_ids:
                holders.setdefault(block_id, []).append(req_id)
        out = StepOutput()
        for req_id, num in step.num_scheduled_tokens.items():
            state = self.requests[req_id]
            start = state.num_computed
            assert 0 < num <= len(state.token_ids) - start, (req_id, num)
            assert len(state.block_ids) * self.block_size >= start + num, req_id
            for pos in range(start, start + num):
                # A block being written belongs to its writer alone.
                assert holders[state.block_ids[pos // self.block_size]] == [req_id], req_id
                self.slot_owner[self._slot(state, pos)] = (req_id, pos, state.token_ids[pos])
            if state.echo:
                first = max(start, 1)
                out.prompt_logprobs[req_id] = PromptLogprobs(
                    first, [-float(p) for p in range(first, start + num)]
                )
            state.num_computed += num
            out.req_ids.append(req_id)
            if state.num_computed == len(state.token_ids):
                pos = len(state.token_ids)
                if self.from_context is not None:
                    token = self.from_context(state.token_ids)
                elif self.next_token is not None:
                    token = self.next_token(req_id, pos)
                else:
                    token = 3 + pos % 100
                out.sampled_token_ids.append([token])
                out.logprobs.append([-0.5])
                out.top_logprobs.append([])
            else:
                out.sampled_token_ids.append([])
                out.logprobs.append([])
                out.top_logprobs.append([])
        return out


def step(sched: Scheduler, worker: ContractWorker) -> tuple[SchedulerOutput, list[Request]]:
    out = sched.schedule()
    return out, sched.update(out, worker.execute(out.step_input))


def run_to_completion(
    sched: Scheduler, worker: ContractWorker, max_steps: int = 10_000
) -> list[SchedulerOutput]:
    outs = []
    for _ in range(max_steps):
        if not sched.has_unfinished():
            return outs
        outs.append(step(sched, worker)[0])
    raise AssertionError("requests did not finish")
