"""Sampling: greedy, temperature, top-k, top-p and seeds, statistically and end to end."""

from __future__ import annotations

import random

import pytest
import torch

from contract.sampling import SamplingParams
from tests.worker.driver import GREEDY, Driver, generate_alone, start_worker
from worker.sampler import MIN_CANDIDATES, SamplingRows, sample, seeded_uniform

NUM_DRAWS = 20_000
# Chi-square critical value at p = 0.001 for up to 7 degrees of freedom is 24.3; the test
# RNG is seeded, so each run sees the same draws.
CHI_SQUARE_LIMIT = 24.3
LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
PROMPT = [1, 403, 14, 292, 77, 5, 498, 260]


def draw(
    logits: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
):
    """Token counts over NUM_DRAWS rows of the same logits."""
    rng = random.Random(1234)
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p
    ).as_sampled()
    rows = SamplingRows([params] * NUM_DRAWS, [rng.random() for _ in range(NUM_DRAWS)])
    tokens = sample(logits.expand(NUM_DRAWS, -1).clone(), rows)
    return torch.bincount(tokens, minlength=logits.numel()).double()


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs.double() * counts.sum()
    kept = expected > 0
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum())


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Meta's sample_top_p, written out: keep the most likely tokens until mass p is reached."""
    order = probs.argsort(descending=True)
    kept = torch.zeros_like(probs)
    mass = 0.0
    for token in order.tolist():
        if mass > top_p:
            break
        kept[token] = probs[token]
        mass += probs[token].item()
    return kept / kept.sum()


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_frequencies_follow_softmax_of_logits_over_temperature(temperature):
    counts = draw(LOGITS, temperature)
    assert chi_square(counts, torch.softmax(LOGITS / temperature, -1)) < CHI_SQUARE_LIMIT


def test_a_wrong_temperature_is_detected():
    counts = draw(LOGITS, 1.0)
    assert chi_square(counts, torch.softmax(LOGITS / 1.3, -1)) > CHI_SQUARE_LIMIT


@pytest.mark.parametrize("top_p", [0.5, 0.8, 0.95])
def test_top_p_draws_from_the_nucleus_only(top_p):
    probs = torch.softmax(LOGITS, -1)
    target = nucleus(probs, top_p)
    counts = draw(LOGITS, 1.0, top_p=top_p)
    assert counts[target == 0].sum() == 0
    assert chi_square(counts, target) < CHI_SQUARE_LIMIT


@pytest.mark.parametrize("top_k", [1, 3, 5])
def test_top_k_draws_from_the_k_best_only(top_k):
    counts = draw(LOGITS, 1.0, top_k=top_k)
    target = torch.softmax(LOGITS[:top_k], -1)  # LOGITS are sorted, best first
    assert counts[top_k:].sum() == 0
    assert chi_square(counts[:top_k], target) < CHI_SQUARE_LIMIT


def test_top_k_then_top_p_on_the_renormalised_distribution():
    top_k_probs = torch.softmax(LOGITS[:4], -1)
    target = torch.zeros_like(LOGITS, dtype=torch.float64)
    target[:4] = nucleus(top_k_probs, 0.7)
    counts = draw(LOGITS, 1.0, top_k=4, top_p=0.7)
    assert counts[target == 0].sum() == 0
    assert chi_square(counts, target) < CHI_SQUARE_LIMIT


@pytest.mark.slow
@pytest.mark.parametrize("top_p", [0.1, 0.9])
def test_top_p_over_a_large_vocabulary_is_exact(top_p):
    """The nucleus holds fewer tokens than the sampler first takes as candidates (0.1) or
    many more (0.9), which makes it widen its candidates."""
    logits = torch.linspace(3.0, -3.0, 2000)
    target = nucleus(torch.softmax(logits, -1), top_p)
    counts = draw(logits, 1.0, top_p=top_p)
    assert counts[target == 0].sum() == 0
    assert ((target > 0).sum() > MIN_CANDIDATES) == (top_p == 0.9)
    # Ten bins of equal expected mass over the nucleus, best tokens first.
    edges = torch.searchsorted(target.cumsum(0), torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    bins = torch.tensor_split(torch.arange(2000), edges)
    binned_counts = torch.stack([counts[b].sum() for b in bins])
    binned_target = torch.stack([target[b].sum() for b in bins])
    assert chi_square(binned_counts, binned_target) < 27.9  # 9 degrees of freedom, p = 0.001


def above_min_p(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """The distribution min-p leaves: tokens at least min_p times the best, renormalised."""
    kept = torch.where(probs >= min_p * probs.max(), probs, torch.zeros_like(probs))
    return kept / kept.sum()


@pytest.mark.parametrize(("min_p", "temperature"), [(0.1, 1.0), (0.3, 1.0), (0.3, 0.5)])
def test_min_p_draws_from_tokens_at_least_min_p_times_the_best(min_p, temperature):
    # After temperature, as vLLM applies it: the threshold is on the tempered distribution.
    target = above_min_p(torch.softmax(LOGITS / temperature, -1), min_p)
    counts = draw(LOGITS, temperature, min_p=min_p)
    assert counts[target == 0].sum() == 0
    assert (target == 0).any() and (target > 0).sum() > 1  # the threshold cut, and kept some
    assert chi_square(counts, target) < CHI_SQUARE_LIMIT


def test_min_p_then_top_k_and_top_p_on_the_renormalised_distribution():
    kept = above_min_p(torch.softmax(LOGITS, -1), 0.1)  # 5 tokens
    target = torch.zeros_like(kept)
    target[:4] = nucleus(kept[:4] / kept[:4].sum(), 0.7)
    counts = draw(LOGITS, 1.0, top_k=4, top_p=0.7, min_p=0.1)
    assert counts[target == 0].sum() == 0
    assert chi_square(counts, target) < CHI_SQUARE_LIMIT


def test_min_p_1_keeps_the_likeliest_token_alone():
    counts = draw(LOGITS, 1.0, min_p=1.0)
    assert counts[0] == NUM_DRAWS


@pytest.mark.slow
def test_min_p_over_a_large_vocabulary_is_exact():
    """More tokens clear the threshold than the sampler first takes as candidates, so it
    widens them: every token above the threshold can be drawn, none below it is."""
    logits = torch.linspace(3.0, -3.0, 2000)
    target = above_min_p(torch.softmax(logits, -1), 0.2)
    assert (target > 0).sum() > MIN_CANDIDATES
    counts = draw(logits, 1.0, min_p=0.2)
    assert counts[target == 0].sum() == 0
    edges = torch.searchsorted(target.cumsum(0), torch.linspace(0.1, 0.9, 9, dtype=torch.float64))
    bins = torch.tensor_split(torch.arange(2000), edges)
    binned_counts = torch.stack([counts[b].sum() for b in bins])
    binned_target = torch.stack([target[b].sum() for b in bins])
    assert chi_square(binned_counts, binned_target) < 27.9  # 9 degrees of freedom, p = 0.001


def test_greedy_rows_take_the_argmax_beside_sampled_rows():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    temperatures = [0.0, 1.0, 0.0, 0.7, 0.0, 1.0]
    rows = SamplingRows([SamplingParams(temperature=t) for t in temperatures], [0.99] * 6)
    tokens = sample(logits, rows)
    assert tokens[[0, 2, 4]].tolist() == logits[[0, 2, 4]].argmax(-1).tolist()


def test_seeded_uniform_depends_on_seed_and_position_only():
    assert seeded_uniform(42, 7) == seeded_uniform(42, 7)
    assert len({seeded_uniform(42, p) for p in range(100)}) == 100
    assert seeded_uniform(42, 7) != seeded_uniform(43, 7)
    draws = [seeded_uniform(s, p) for s in range(50) for p in range(100)]
    assert all(0.0 <= u < 1.0 for u in draws)
    # Ten equal bins, 500 expected in each: a chi-square over 9 degrees of freedom.
    bins = [0] * 10
    for u in draws:
        bins[int(u * 10)] += 1
    assert sum((b - 500) ** 2 / 500 for b in bins) < 27.9  # p = 0.001


@pytest.fixture(scope="module")
def worker(stories_dir):
    return start_worker(stories_dir, num_kv_blocks=256)


@pytest.mark.slow
def test_top_k_1_equals_greedy(worker):
    greedy = generate_alone(worker, PROMPT, GREEDY, 20).output_ids
    options = SamplingParams(temperature=1.0, top_k=1)
    assert generate_alone(worker, PROMPT, options, 20).output_ids == greedy


@pytest.mark.slow
def test_seeded_request_gives_the_same_tokens_alone_batched_and_resumed(worker):
    options = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    alone = generate_alone(worker, PROMPT, options, 24).output_ids
    assert alone == generate_alone(worker, PROMPT, options, 24).output_ids
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=99)
    assert alone != generate_alone(worker, PROMPT, other_seed, 24).output_ids

    driver = Driver(worker, random.Random(3))
    rng = random.Random(5)
    for i in range(6):
        prompt = [1] + [rng.randrange(3, 512) for _ in range(rng.randint(1, 40))]
        driver.add(f"noise{i}", prompt, SamplingParams(temperature=1.0), 24)
    seeded = driver.add("seeded", PROMPT, options, 24)
    for _ in range(10):
        driver.step(chunk_of=lambda seq: 5)
    driver.preempt("seeded")
    driver.run(chunk_of=lambda seq: 7)
    assert seeded.output_ids == alone


def test_unseeded_requests_follow_the_worker_seed(stories_dir):
    options = SamplingParams(temperature=1.0)
    runs = [
        generate_alone(start_worker(stories_dir, seed=seed), PROMPT, options, 16).output_ids
        for seed in (0, 0, 1)
    ]
    assert runs[0] == runs[1] != runs[2]
