"""Arrival times: the mean rate and the burstiness must come out as asked (seeded, so the
statistical checks are deterministic)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from loadtest.arrivals import arrival_offsets

NUM = 20_000


def gaps(rate: float, burstiness: float, seed: int = 0) -> np.ndarray:
    offsets = arrival_offsets(NUM, rate, burstiness, np.random.default_rng(seed))
    assert offsets[0] == 0.0
    assert all(b >= a for a, b in zip(offsets, offsets[1:], strict=False))
    return np.diff(offsets)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_mean_rate_is_the_requested_rate_whatever_the_burstiness(burstiness: float) -> None:
    g = gaps(rate=8.0, burstiness=burstiness)
    # Standard error of the mean gap is cv / sqrt(n) <= 2 / 141 = 1.4%; allow ~3 of them.
    assert 1.0 / g.mean() == pytest.approx(8.0, rel=0.045)


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gap_variation_follows_burstiness(burstiness: float) -> None:
    g = gaps(rate=3.0, burstiness=burstiness)
    # Gamma with shape k has coefficient of variation 1 / sqrt(k).
    assert g.std() / g.mean() == pytest.approx(1.0 / math.sqrt(burstiness), rel=0.05)


def test_burstiness_one_is_poisson_exponential_gaps() -> None:
    rate = 5.0
    g = np.sort(gaps(rate=rate, burstiness=1.0))
    empirical = np.arange(1, len(g) + 1) / len(g)
    exponential_cdf = 1.0 - np.exp(-rate * g)
    ks_statistic = np.max(np.abs(empirical - exponential_cdf))
    # Kolmogorov-Smirnov critical value at the 1% level.
    assert ks_statistic < 1.63 / math.sqrt(len(g))


def test_poisson_counts_per_window_have_variance_equal_to_mean() -> None:
    offsets = np.array(arrival_offsets(NUM, 10.0, 1.0, np.random.default_rng(3)))
    counts = np.bincount(offsets.astype(int))[:-1]  # whole 1 s windows
    assert counts.mean() == pytest.approx(10.0, rel=0.05)
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)


def test_infinite_rate_sends_everything_at_once() -> None:
    assert arrival_offsets(5, math.inf, 1.0, np.random.default_rng(0)) == [0.0] * 5


def test_same_seed_same_arrivals_other_seed_other_arrivals() -> None:
    a = arrival_offsets(100, 2.0, 0.5, np.random.default_rng(7))
    b = arrival_offsets(100, 2.0, 0.5, np.random.default_rng(7))
    c = arrival_offsets(100, 2.0, 0.5, np.random.default_rng(8))
    assert a == b
    assert a != c


@pytest.mark.parametrize(("rate", "burstiness"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_bad_rate_or_burstiness_is_refused(rate: float, burstiness: float) -> None:
    with pytest.raises(ValueError):
        arrival_offsets(10, rate, burstiness, np.random.default_rng(0))
