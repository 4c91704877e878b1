"""Presence, frequency and repetition penalties and logit biases against their definitions,
written out here token by token: the distribution they sample from, their exact effect on
greedy decoding in a real worker (batched, chunked, resumed), and logprobs left raw."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from contract.sampling import SamplingParams
from tests.worker.driver import GREEDY, Driver, all_position_logits, start_worker
from tests.worker.test_sampling import CHI_SQUARE_LIMIT, LOGITS, NUM_DRAWS, chi_square
from worker.penalties import PenaltyTable
from worker.sampler import SamplingRows, sample

PROMPT = [1, 403, 14, 292, 77, 5, 498, 260]


def reference_logits(
    logits: list[float], prompt: list[int], output: list[int], options: SamplingParams
) -> list[float]:
    """The definitions, one token at a time: repetition (CTRL / Hugging Face) over prompt and
    output, then OpenAI's frequency and presence penalties over the output, then the bias."""
    counts = Counter(output)
    seen = set(prompt) | set(output)
    bias = dict(options.logit_bias)
    shaped = []
    for token, logit in enumerate(logits):
        if token in seen:
            p = options.repetition_penalty
            logit = logit / p if logit > 0 else logit * p
        logit -= options.frequency_penalty * counts[token]
        logit -= options.presence_penalty * (counts[token] > 0)
        shaped.append(logit + bias.get(token, 0.0))
    return shaped


SHAPINGS = {
    "presence": SamplingParams(temperature=0.0, presence_penalty=1.5),
    "frequency": SamplingParams(temperature=0.0, frequency_penalty=0.9),
    "repetition": SamplingParams(temperature=0.0, repetition_penalty=1.8),
    "repetition below 1": SamplingParams(temperature=0.0, repetition_penalty=0.6),
    "bias": SamplingParams(temperature=0.0, logit_bias={13: 4.0, 276: -100.0}),
    "all": SamplingParams(
        temperature=0.0,
        presence_penalty=-0.5,
        frequency_penalty=0.7,
        repetition_penalty=1.3,
        logit_bias={286: 2.5},
    ),
}


def test_sampled_frequencies_follow_the_shaped_distribution() -> None:
    prompt, output = [1, 3], [0, 0, 2, 6]
    options = SamplingParams(
        temperature=0.8,
        presence_penalty=0.4,
        frequency_penalty=0.3,
        repetition_penalty=1.5,
        logit_bias={5: 2.0, 7: 1.5, 4: -100.0},
    )
    table = PenaltyTable(len(LOGITS), torch.device("cpu"))
    row = table.add(prompt + output, len(prompt), options)
    logits = LOGITS.expand(NUM_DRAWS, -1).clone()
    table.apply(logits, list(range(NUM_DRAWS)), [row] * NUM_DRAWS, [options] * NUM_DRAWS)
    rng = random.Random(99)
    params = SamplingParams(temperature=0.8).as_sampled()
    rows = SamplingRows([params] * NUM_DRAWS, [rng.random() for _ in range(NUM_DRAWS)])
    counts = torch.bincount(sample(logits, rows), minlength=len(LOGITS)).double()
    expected = reference_logits(LOGITS.tolist(), prompt, output, options)
    target = torch.softmax(torch.tensor(expected, dtype=torch.float64) / 0.8, -1)
    assert chi_square(counts, target) < CHI_SQUARE_LIMIT
    # The raw distribution is far from it: the test sees the shaping.
    assert chi_square(counts, torch.softmax(LOGITS.double() / 0.8, -1)) > 10 * CHI_SQUARE_LIMIT
    assert counts[4] == 0  # -100 leaves it no mass to speak of


def test_recorded_tokens_are_counted_per_row() -> None:
    table = PenaltyTable(8, torch.device("cpu"))
    options = SamplingParams(frequency_penalty=1.0)
    rows = [table.add([1, 2], 2, options) for _ in range(10)]  # past the first 8 rows
    assert table.num_rows == 16 and table.num_used == 10
    table.record(rows[:3], torch.tensor([5, 5, 6]))
    table.record(rows[:1], torch.tensor([5]))
    assert table.counts[rows[0]].tolist() == [0, 0, 0, 0, 0, 2, 0, 0]
    assert table.counts[rows[2]].tolist() == [0, 0, 0, 0, 0, 0, 1, 0]
    assert table.counts[rows[3]].sum() == 0
    table.release(rows[0])
    again = table.add([1, 2, 7], 2, options)  # resumed: token 7 was generated before
    assert again == rows[0] and table.counts[again].tolist() == [0, 0, 0, 0, 0, 0, 0, 1]


@pytest.fixture(scope="module")
def worker(stories_dir):
    return start_worker(stories_dir, num_kv_blocks=256)


def reference_greedy(worker, prompt: list[int], options: SamplingParams, num: int) -> list[int]:
    """Greedy decoding over the reference's shaped logits of the worker's own forward."""
    tokens = list(prompt)
    for _ in range(num):
        raw = all_position_logits(worker, tokens)[-1].double().tolist()
        shaped = reference_logits(raw, prompt, tokens[len(prompt) :], options)
        tokens.append(max(range(len(shaped)), key=shaped.__getitem__))
    return tokens[len(prompt) :]


@pytest.mark.slow
def test_greedy_decoding_follows_the_definitions_batched_chunked_and_resumed(worker) -> None:
    num_tokens = 24
    driver = Driver(worker, random.Random(4))
    plain = driver.add("plain", PROMPT, GREEDY, num_tokens)
    seqs = {name: driver.add(name, PROMPT, opts, num_tokens) for name, opts in SHAPINGS.items()}
    # More requests with penalties than the table's first rows: it grows mid-run.
    for i in range(6):
        driver.add(f"more{i}", PROMPT[: i + 2], SHAPINGS["frequency"], num_tokens)
    for _ in range(8):
        driver.step(chunk_of=lambda seq: 3)
    driver.preempt("all")  # its counts are rebuilt from the output it had
    driver.run(chunk_of=lambda seq: 5)
    for name, options in SHAPINGS.items():
        expected = reference_greedy(worker, PROMPT, options, num_tokens)
        assert seqs[name].output_ids == expected, name
        assert expected != plain.output_ids, f"{name} changed nothing"
    assert 276 in plain.output_ids and 276 not in seqs["bias"].output_ids


def test_logprobs_stay_those_of_the_raw_logits(worker) -> None:
    options = SamplingParams(
        temperature=0.0,
        logprobs=True,
        top_logprobs=3,
        frequency_penalty=2.0,
        repetition_penalty=1.5,
        logit_bias={13: 5.0},
    )
    driver = Driver(worker)
    seq = driver.add("shaped", PROMPT, options, 12)
    driver.run()
    raw = torch.log_softmax(all_position_logits(worker, seq.token_ids[:-1]).float(), -1)
    for i, token in enumerate(seq.output_ids):
        position = len(PROMPT) - 1 + i
        assert seq.logprobs[i] == pytest.approx(raw[position, token].item(), abs=1e-5)
        best = raw[position].topk(3)
        assert [t for t, _ in seq.top_logprobs[i]] == best.indices.tolist()
    # The shaped choice differs from the raw argmax somewhere: the logprobs are not its own.
    assert any(
        token != raw[len(PROMPT) - 1 + i].argmax().item() for i, token in enumerate(seq.output_ids)
    )
