"""Speculative decoding in the scheduler, without a model: proposals, their KV slots and
budget, the rollback of rejected tokens (blocks and prefix hashes), and when it is skipped."""

from __future__ import annotations

from contract.step import StepOutput
from scheduler.config import SchedulerConfig
from scheduler.ngram_proposer import NgramProposer
from scheduler.request import Request, RequestStatus
from scheduler.scheduler import Scheduler, SchedulerOutput
from scheduler.speculation import DEFAULT_MAX_BATCH, MIN_PROPOSED_TO_JUDGE, Speculator
from tests.scheduler.helpers import make_request, make_scheduler


def test_ngram_proposes_what_followed_the_latest_match() -> None:
    proposer = NgramProposer(min_n=1, max_n=3)
    assert proposer.propose([5, 6, 7, 8, 9, 5, 6, 7], 3) == [8, 9, 5]
    assert proposer.propose([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2) == [7, 1]  # the latest
    assert proposer.propose([1, 2, 3, 4], 4) == []  # the last token never occurred before
    assert proposer.propose([4, 4], 3) == [4, 4, 4]  # a repetition goes on
    assert proposer.propose([1, 5, 6, 1, 5], 5) == [6, 1, 5, 6, 1]
    # The longest pattern wins: [2, 3] matched at the end of [1, 2, 3] -> 8, not 3 -> 5.
    assert proposer.propose([3, 5, 1, 2, 3, 8, 0, 2, 3], 1) == [8]


def _answer(sched_out: SchedulerOutput, sampled: dict[str, list[int]]) -> StepOutput:
    req_ids = list(sched_out.step_input.num_scheduled_tokens)
    return StepOutput(
        req_ids=req_ids,
        sampled_token_ids=[sampled.get(r, []) for r in req_ids],
        logprobs=[[] for _ in req_ids],
        top_logprobs=[[] for _ in req_ids],
    )


def _repeating(req_id: str, max_tokens: int = 30, **params: object) -> Request:
    # 10 11 12 13 | 10 11 12: prompt lookup proposes 13 10 11 12 ... after it.
    return Request(
        req_id,
        [10, 11, 12, 13, 10, 11, 12],
        _params(max_tokens, **params),
        eos_ids=(2,),
    )


def _params(max_tokens: int, **params: object):
    from contract.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, **params)


def _speculating(num_blocks: int = 16, **config: object) -> Scheduler:
    config.setdefault("num_speculative_tokens", 4)
    return make_scheduler(num_blocks=num_blocks, block_size=4, speculative="ngram", **config)


def _prefill(sched: Scheduler, *reqs: Request) -> None:
    """Admit and prefill the requests in one step; each samples 13 first."""
    for req in reqs:
        sched.add_request(req)
    out = sched.schedule()
    assert not out.step_input.spec_token_ids  # a prefill never speculates
    sched.update(out, _answer(out, {req.req_id: [13] for req in reqs}))


def test_rejected_tokens_give_back_their_blocks_and_never_reach_the_prefix_cache() -> None:
    sched = _speculating()
    req = _repeating("a")
    _prefill(sched, req)
    assert req.block_ids == [0, 1] and req.num_computed_tokens == 7

    out = sched.schedule()
    # 10 11 12 13 10 11 12 13: the last 4 tokens occurred at the start, followed by 10 11 12 13.
    assert out.step_input.spec_token_ids == {"a": [10, 11, 12, 13]}
    assert out.step_input.num_scheduled_tokens == {"a": 5}
    # Positions 7..11: block 2 is allocated for the proposals, filled by them alone.
    assert [r.new_block_ids for r in out.step_input.running] == [[2]]
    assert req.block_ids == [0, 1, 2]

    sched.update(out, _answer(out, {"a": [99]}))  # the first proposal is rejected
    assert req.output_token_ids == [13, 99]
    assert req.num_computed_tokens == 8
    assert req.block_ids == [0, 1]  # block 2 held only rejected tokens
    pool = sched.kv.pool
    assert pool.ref_cnts[2] == 0 and pool.block_hashes[2] is None
    assert pool.num_cached_blocks == 2  # the two full blocks of accepted tokens
    assert req.num_spec_proposed == 4 and req.num_spec_accepted == 0

    # The next step sends 99 and a block for it again; the worker was told to cut block 2.
    out = sched.schedule()
    [running] = out.step_input.running
    assert running.new_token_ids == [99]
    assert running.new_block_ids == req.block_ids[2:] and len(req.block_ids) == 3


def test_accepted_tokens_count_as_computed_and_their_full_blocks_are_cached() -> None:
    sched = _speculating()
    req = _repeating("a")
    _prefill(sched, req)
    out = sched.schedule()
    assert out.step_input.spec_token_ids == {"a": [10, 11, 12, 13]}
    sched.update(out, _answer(out, {"a": [10, 11, 12, 13, 77]}))  # all accepted, one bonus
    assert req.output_token_ids == [13, 10, 11, 12, 13, 77]
    assert req.num_computed_tokens == 12  # the input token and the 4 accepted
    assert req.block_ids == [0, 1, 2]
    pool = sched.kv.pool
    assert pool.num_cached_blocks == 3
    assert pool.lookup(req.block_hashes[2], (10, 11, 12, 13)) == 2
    assert sched.speculator is not None and sched.speculator.acceptance_rate == 1.0


def test_a_stop_among_accepted_tokens_ends_the_request_and_frees_everything() -> None:
    sched = _speculating()
    req = _repeating("a")
    _prefill(sched, req)
    out = sched.schedule()
    sched.update(out, _answer(out, {"a": [10, 2]}))  # EOS as the correction
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.output_token_ids == [13, 10, 2]
    assert sched.kv.pool.num_free_blocks == 16


def test_the_worker_answering_other_than_the_proposals_fails_the_request_alone() -> None:
    sched = _speculating()
    req, other = _repeating("a"), make_request("b", 3)
    _prefill(sched, req, other)
    out = sched.schedule()
    assert "a" in out.step_input.spec_token_ids
    changed = sched.update(out, _answer(out, {"a": [55, 56], "b": [41]}))
    assert req.status is RequestStatus.FINISHED_ERROR and "proposed tokens" in (req.error or "")
    assert other.status is RequestStatus.RUNNING and set(changed) == {req, other}


def test_proposals_count_in_the_token_budget_and_leave_one_token_per_later_request() -> None:
    sched = _speculating(max_num_batched_tokens=16, max_num_seqs=2, num_speculative_tokens=32)
    a, b = _repeating("a"), _repeating("b")
    _prefill(sched, a, b)
    out = sched.schedule()
    assert out.step_input.num_scheduled_tokens == {"a": 15, "b": 1}
    assert out.step_input.spec_token_ids == {"a": [10, 11, 12, 13] * 3 + [10, 11]}


def test_proposals_stop_short_of_max_tokens() -> None:
    sched = _speculating()
    req = _repeating("a", max_tokens=3)
    _prefill(sched, req)
    out = sched.schedule()
    # One output so far, three allowed: one proposal, and the worker's own token after it.
    assert out.step_input.spec_token_ids == {"a": [10]}


def test_no_proposals_in_a_batch_over_the_threshold() -> None:
    sched = _speculating(speculative_max_batch=1)
    a, b = _repeating("a"), _repeating("b")
    _prefill(sched, a, b)
    out = sched.schedule()
    assert out.step_input.spec_token_ids == {}
    assert out.step_input.num_scheduled_tokens == {"a": 1, "b": 1}


def test_prompt_lookup_speculates_up_to_two_running_requests_by_default() -> None:
    for running, speculating in ((2, True), (3, False)):
        sched = _speculating(num_blocks=64)
        reqs = [_repeating(f"r{i}") for i in range(running)]
        _prefill(sched, *reqs)
        proposed = sched.schedule().step_input.spec_token_ids
        assert set(proposed) == ({req.req_id for req in reqs} if speculating else set())


def test_a_draft_model_proposes_for_a_lone_request_only_by_default() -> None:
    draft = {"speculative": "draft", "draft_model": "draft.gguf"}
    assert Speculator(SchedulerConfig(**draft), max_model_len=64).max_batch == 1
    assert DEFAULT_MAX_BATCH == {"ngram": 2, "draft": 1}
    chosen = SchedulerConfig(**draft, speculative_max_batch=6)
    assert Speculator(chosen, max_model_len=64).max_batch == 6


def test_no_proposals_when_blocks_are_short_and_no_preemption_for_them() -> None:
    sched = _speculating(num_blocks=2)
    req = _repeating("a")
    _prefill(sched, req)
    out = sched.schedule()  # the decode fits block 1; proposals would need a third block
    assert out.step_input.spec_token_ids == {} and out.num_preempted == 0
    assert out.step_input.num_scheduled_tokens == {"a": 1}


def test_requests_with_penalties_or_min_tokens_due_do_not_speculate() -> None:
    sched = _speculating()
    a = _repeating("a", presence_penalty=0.5)
    b = _repeating("b", min_tokens=5)
    _prefill(sched, a, b)
    assert sched.schedule().step_input.spec_token_ids == {}


def test_a_request_with_low_acceptance_stops_speculating() -> None:
    sched = _speculating(speculative_min_acceptance=0.5, num_blocks=64)
    req = _repeating("a", max_tokens=200)
    _prefill(sched, req)
    num_steps_speculating = 0
    while True:
        out = sched.schedule()
        proposed = out.step_input.spec_token_ids.get("a")
        if not proposed:
            break
        num_steps_speculating += 1
        # Reject everything, answering the start of the pattern again.
        sched.update(out, _answer(out, {"a": [10 if proposed[0] != 10 else 11]}))
    assert req.num_spec_proposed >= MIN_PROPOSED_TO_JUDGE and req.num_spec_accepted == 0
    assert num_steps_speculating == MIN_PROPOSED_TO_JUDGE // 4
    assert sched.kv.pool.num_free_blocks == 64 - len(req.block_ids)


def _answer_with_logprobs(sched_out: SchedulerOutput, req_id: str, tokens: list[int]):
    out = _answer(sched_out, {req_id: tokens})
    out.logprobs = [[-0.1 * (j + 1) for j in range(len(tokens))]]
    return out


def test_a_stop_id_among_accepted_tokens_keeps_nothing_after_it() -> None:
    sched = _speculating()
    req = _repeating("a", stop_token_ids=[11], logprobs=True)
    _prefill(sched, req)
    out = sched.schedule()
    assert out.step_input.spec_token_ids == {"a": [10, 11, 12, 13]}
    sched.update(out, _answer_with_logprobs(out, "a", [10, 11, 12, 13, 77]))
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.output_token_ids == [13, 10, 11]
    assert req.logprobs == [-0.1, -0.2]  # the prefill's token asked for none here
    assert sched.kv.pool.num_free_blocks == 16


def test_a_stop_string_inside_accepted_tokens_is_found_at_its_token() -> None:
    sched = _speculating()
    req = _repeating("a", stop=["eleven"])
    _prefill(sched, req)
    out = sched.schedule()
    scanned: list[list[int]] = []

    def scan_text(r: Request, final: bool) -> bool:
        # Stands in for the detokenizer: token 11's text completes the stop string.
        scanned.append(list(r.output_token_ids))
        return r.output_token_ids[-1] == 11

    sched.update(out, _answer(out, {"a": [10, 11, 12, 13, 77]}), scan_text)
    assert req.status is RequestStatus.FINISHED_STOPPED
    assert req.output_token_ids == [13, 10, 11]
    assert scanned[0] == [13, 10]  # scanned token by token, as plain decoding scans
