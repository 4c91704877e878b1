"""Verification of proposed tokens in the worker: sampled output keeps the model's
distribution even with a bad proposer or a deliberately bad draft model (chi-square tests on
stories260K's 512-token vocabulary against the float64 oracle), the step check refuses
proposals it cannot verify, and proposals cross worker.proto."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from contract.sampling import SamplingParams
from contract.step import NewRequest, RunningRequest, StepInput
from contract.step_proto import step_input_from_proto, step_input_to_proto
from loompb import worker_pb2 as pb
from tests.worker.dense_reference import dense_logits
from tests.worker.draft_models import write_swapped_stories
from tests.worker.driver import read_meta_model, start_worker
from worker.step_check import StepRejected

# "Once upon a time, there was a little": many likely next words.
PROMPT = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376]
TEMPERATURE = 0.8
NUM_DRAWS = 2400
BATCH = 200


@pytest.fixture(scope="module")
def worker(stories_dir):
    # The model is tiny: on a shared 2-core box a second intra-op thread only slows it.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield start_worker(stories_dir, num_kv_blocks=BATCH)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def oracle(stories_dir):
    files = read_meta_model(stories_dir)
    return lambda tokens: dense_logits(files.weights, files.params, tokens)[-1]


@pytest.fixture(scope="module")
def bad_draft_worker(stories_dir, oracle, tmp_path_factory):
    """stories260K with a draft that proposes the model's second choice after PROMPT (its LM
    head swaps that token's row with the first choice's)."""
    ranked = oracle(PROMPT).argsort(descending=True).tolist()
    draft = write_swapped_stories(
        tmp_path_factory.mktemp("swapped") / "draft", ranked[1], ranked[0]
    )
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield start_worker(stories_dir, num_kv_blocks=BATCH, draft_model=str(draft))
    torch.set_num_threads(before)


def _chi_square(counts: Counter, probs: torch.Tensor, num: int) -> tuple[float, int]:
    """Pearson's statistic over tokens expected >= 5 times (the rest pooled) and its
    degrees of freedom."""
    expected = (probs * num).tolist()
    big = [t for t, e in enumerate(expected) if e >= 5]
    observed = [counts[t] for t in big] + [num - sum(counts[t] for t in big)]
    wanted = [expected[t] for t in big] + [num - sum(expected[t] for t in big)]
    if wanted[-1] < 5:  # too little pooled mass to be a bin
        observed, wanted = observed[:-1], wanted[:-1]
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, wanted, strict=True))
    return stat, len(wanted) - 1


def _critical(df: int, z: float = 3.09) -> float:
    """The chi-square quantile at 1 - 0.001 (Wilson-Hilferty)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _draw_with_proposals(
    worker, proposed: list[int] | int, seed0: int, num_draws: int = NUM_DRAWS
) -> list[list[int]]:
    """Each of `num_draws` requests with PROMPT computes all but its last prompt token, then
    that token with `proposed` after it in one step (an int: that many of the worker's draft
    model's); returns what each step answered, after the draft's proposals when it drafted."""
    answers = []
    for first in range(0, num_draws, BATCH):
        req_ids = [f"r{seed0 + first + i}" for i in range(BATCH)]
        new = [
            NewRequest(
                req_id,
                list(PROMPT),
                [i],
                SamplingParams(temperature=TEMPERATURE, seed=seed0 + first + i).as_sampled(),
            )
            for i, req_id in enumerate(req_ids)
        ]
        worker.execute(
            StepInput(new=new, num_scheduled_tokens=dict.fromkeys(req_ids, len(PROMPT) - 1))
        )
        drafts = isinstance(proposed, int)
        num_proposed = proposed if drafts else len(proposed)
        out = worker.execute(
            StepInput(
                running=[RunningRequest(r, [], []) for r in req_ids],
                num_scheduled_tokens=dict.fromkeys(req_ids, 1 + num_proposed),
                spec_token_ids={} if drafts else {r: list(proposed) for r in req_ids},
                num_draft_tokens=dict.fromkeys(req_ids, num_proposed) if drafts else {},
            )
        )
        if drafts:
            answers += [
                [*out.draft_token_ids[r], -1, *a]
                for r, a in zip(req_ids, out.sampled_token_ids, strict=True)
            ]
        else:
            answers += out.sampled_token_ids
        worker.execute(StepInput(finished_req_ids=req_ids))
    return answers


def test_sampled_output_keeps_the_model_distribution_with_a_bad_proposer(worker, oracle) -> None:
    probs = torch.softmax(oracle(PROMPT) / TEMPERATURE, dim=-1)
    ranked = probs.argsort(descending=True).tolist()
    # The second likeliest token, then the least likely one: often rejected, sometimes not.
    proposed = [ranked[1], ranked[-1]]
    answers = _draw_with_proposals(worker, proposed, seed0=0)
    assert all(1 <= len(a) <= 3 and a[: len(a) - 1] == proposed[: len(a) - 1] for a in answers)

    firsts = Counter(a[0] for a in answers)
    num_accepted = firsts[proposed[0]]
    assert 0 < num_accepted < NUM_DRAWS  # both acceptance and rejection were exercised
    stat, df = _chi_square(firsts, probs.float(), NUM_DRAWS)
    assert stat < _critical(df), (stat, df)
    # The test has the power to see a subtly wrong law: the same draws against the model
    # at temperature 1 fail it.
    wrong, wrong_df = _chi_square(firsts, torch.softmax(oracle(PROMPT), -1).float(), NUM_DRAWS)
    assert wrong > _critical(wrong_df)

    # After an accepted proposal, the next token follows the model given that proposal.
    seconds = Counter(a[1] for a in answers if len(a) > 1)
    probs2 = torch.softmax(oracle([*PROMPT, proposed[0]]) / TEMPERATURE, dim=-1).float()
    stat2, df2 = _chi_square(seconds, probs2, num_accepted)
    assert stat2 < _critical(df2), (stat2, df2)


def test_sampled_output_keeps_the_model_distribution_with_a_bad_draft_model(
    bad_draft_worker, oracle
) -> None:
    probs = torch.softmax(oracle(PROMPT) / TEMPERATURE, dim=-1)
    ranked = probs.argsort(descending=True).tolist()
    drawn = _draw_with_proposals(bad_draft_worker, 2, seed0=20_000)
    # Each answer: the draft's two proposals, -1, then what the model answered.
    drafts = [a[:2] for a in drawn]
    answers = [a[3:] for a in drawn]
    assert all(d[0] == ranked[1] for d in drafts)  # the bad proposal it was built to make
    assert all(1 <= len(a) <= 3 and a[:-1] == d[: len(a) - 1]
               for a, d in zip(answers, drafts, strict=True))  # fmt: skip
    firsts = Counter(a[0] for a in answers)
    assert 0 < firsts[ranked[1]] < NUM_DRAWS  # both acceptance and rejection were exercised
    stat, df = _chi_square(firsts, probs.float(), NUM_DRAWS)
    assert stat < _critical(df), (stat, df)


def test_seeded_draws_do_not_depend_on_the_proposals(worker) -> None:
    """Position p draws with the number of (seed, p) whatever was proposed: what a seeded
    request samples at its first position is the same under any proposer."""
    good = _draw_with_proposals(worker, [378, 432], seed0=10_000, num_draws=BATCH)
    bad = _draw_with_proposals(worker, [5, 6], seed0=10_000, num_draws=BATCH)
    assert [a[0] for a in good] == [a[0] for a in bad]


def _decoding(worker, sampling: SamplingParams) -> None:
    worker.execute(StepInput(finished_req_ids=["x"]))
    new = NewRequest("x", list(PROMPT), [0], sampling.as_sampled())
    worker.execute(StepInput(new=[new], num_scheduled_tokens={"x": len(PROMPT) - 1}))


def test_the_step_check_refuses_proposals_it_cannot_verify(worker) -> None:
    _decoding(worker, SamplingParams(temperature=0.0))
    with pytest.raises(StepRejected, match="proposed tokens need a decoding request"):
        worker.execute(StepInput(num_scheduled_tokens={"x": 2}, spec_token_ids={"x": [5, 6]}))
    with pytest.raises(StepRejected, match="unscheduled"):
        worker.execute(StepInput(spec_token_ids={"x": [5]}))
    with pytest.raises(StepRejected, match=r"token ids must be in \[0, 512\)"):
        worker.execute(StepInput(num_scheduled_tokens={"x": 2}, spec_token_ids={"x": [512]}))
    _decoding(worker, SamplingParams(temperature=0.0, presence_penalty=0.5))
    with pytest.raises(StepRejected, match="penalties"):
        worker.execute(StepInput(num_scheduled_tokens={"x": 2}, spec_token_ids={"x": [5]}))
    # Refused as a whole: the request still decodes as before.
    out = worker.execute(StepInput(num_scheduled_tokens={"x": 1}))
    assert len(out.sampled_token_ids[0]) == 1
    worker.execute(StepInput(finished_req_ids=["x"]))


def test_proposals_cross_worker_proto() -> None:
    step = StepInput(num_scheduled_tokens={"a": 3, "b": 1}, spec_token_ids={"a": [7, 8]})
    assert step_input_from_proto(step_input_to_proto(step)) == step
    msg = step_input_to_proto(step)
    msg.spec_token_ids["b"].CopyFrom(pb.ProposedTokens())
    with pytest.raises(ValueError, match=r"spec_token_ids\[b\] must not be empty"):
        step_input_from_proto(msg)
