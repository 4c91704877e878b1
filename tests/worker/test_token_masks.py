"""Structured output on the worker: the packed allowed-token bits of a step cross worker.proto
unchanged, mask only the rows they name, make the logprobs those of the allowed tokens, and a
mask the worker cannot use is refused before anything of the step applies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contract.sampling import SamplingParams
from contract.step import NewRequest, StepInput, TokenMasks
from contract.step_proto import step_input_from_proto, step_input_to_proto
from loompb import worker_pb2
from tests.worker.driver import start_worker
from worker.step_check import StepRejected
from worker.token_masks import apply_token_masks

VOCAB = 512
WORDS = VOCAB // 32
PROMPT = [1, 403, 407, 261, 378]


def packed(rows: list[list[int]]) -> bytes:
    """The bits of each row's allowed token ids."""
    bits = np.zeros((len(rows), WORDS * 32), dtype=np.uint8)
    for i, allowed in enumerate(rows):
        bits[i, allowed] = 1
    return np.packbits(bits, axis=1, bitorder="little").tobytes()


def test_masks_cross_worker_proto_unchanged_and_malformed_ones_are_refused() -> None:
    masks = TokenMasks(["a", "b"], WORDS, packed([[3, 40], [511]]))
    step = StepInput(num_scheduled_tokens={"a": 1, "b": 1}, token_masks=masks)
    msg = worker_pb2.StepInput.FromString(step_input_to_proto(step).SerializeToString())
    assert step_input_from_proto(msg) == step
    msg.token_masks.bits = msg.token_masks.bits[:-4]
    with pytest.raises(ValueError, match=r"token_masks.bits must hold 128 bytes"):
        step_input_from_proto(msg)
    msg.token_masks.req_ids.append("c")
    with pytest.raises(ValueError, match="request c is not scheduled this step"):
        step_input_from_proto(msg)


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_only_the_named_rows_are_masked(layout: str) -> None:
    # A strided tensor takes the torch path a GPU's logits take; a contiguous one numpy's.
    logits = torch.randn(3, VOCAB) if layout == "contiguous" else torch.randn(VOCAB, 3).t()
    assert logits.is_contiguous() == (layout == "contiguous")
    before = logits.clone()
    apply_token_masks(logits, [2, 0], TokenMasks(["x", "y"], WORDS, packed([[7, 300], [0]])))
    assert torch.equal(logits[1], before[1])
    for row, allowed in ((2, [7, 300]), (0, [0])):
        finite = torch.isfinite(logits[row]).nonzero().flatten().tolist()
        assert finite == allowed
        assert torch.equal(logits[row, allowed], before[row, allowed])


@pytest.fixture(scope="module")
def worker(stories_dir):
    return start_worker(stories_dir, block_size=4, num_kv_blocks=64)


def new(req_id: str, **sampling: object) -> NewRequest:
    return NewRequest(req_id, PROMPT, [0, 1], SamplingParams(**sampling).as_sampled())


def test_a_masked_row_samples_an_allowed_token_with_logprobs_over_the_allowed(worker) -> None:
    allowed = [300, 301, 477]
    step = StepInput(
        new=[new("m", temperature=1.0, seed=1, logprobs=True, top_logprobs=5), new("free")],
        num_scheduled_tokens={"m": len(PROMPT), "free": len(PROMPT)},
        token_masks=TokenMasks(["m"], WORDS, packed([allowed])),
        finished_req_ids=[],
    )
    out = worker.execute(step)
    [token] = out.sampled_token_ids[0]
    assert token in allowed
    top = out.top_logprobs[0][0]
    assert sorted(token_id for token_id, _ in top) == allowed  # nothing the mask forbids
    assert math.isclose(sum(math.exp(lp) for _, lp in top), 1.0, rel_tol=1e-5)
    worker.execute(StepInput(finished_req_ids=["m", "free"]))


@pytest.mark.parametrize(
    ("masks", "words"),
    [
        (TokenMasks(["m"], WORDS + 1, bytes(4 * (WORDS + 1))), "16 words wide"),
        (TokenMasks(["m"], WORDS, packed([[]])), "allows no token"),
        (TokenMasks(["other"], WORDS, packed([[5]])), "samples nothing this step"),
    ],
    ids=["width", "empty", "unscheduled"],
)
def test_a_mask_the_worker_cannot_use_refuses_the_step(worker, masks, words) -> None:
    step = StepInput(new=[new("m")], num_scheduled_tokens={"m": 2}, token_masks=masks)
    if words != "samples nothing this step":
        step.num_scheduled_tokens["m"] = len(PROMPT)
    with pytest.raises(StepRejected, match=words):
        worker.execute(step)
    assert "m" not in worker.requests  # nothing of the step applied
