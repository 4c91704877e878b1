"""Percentiles, TPOT, goodput and the summary, checked against numpy on known inputs."""

from __future__ import annotations

import numpy as np
import pytest

from loadtest.metrics import (
    RequestResult,
    mean,
    parse_goodput,
    per_tenant,
    percentile,
    std,
    summarize,
)

SAMPLES = [
    [5.0],
    [3.0, 1.0],
    [0.5, 9.25, 4.0, 4.0, 100.0, 7.5, 2.0],
    np.random.default_rng(0).exponential(30.0, size=1001).tolist(),
]


@pytest.mark.parametrize("values", SAMPLES)
@pytest.mark.parametrize("q", [0, 1, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy(values: list[float], q: float) -> None:
    assert percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12)


@pytest.mark.parametrize("values", SAMPLES)
def test_mean_and_std_match_numpy(values: list[float]) -> None:
    assert mean(values) == pytest.approx(np.mean(values), rel=1e-12)
    assert std(values) == pytest.approx(np.std(values), rel=1e-9, abs=1e-12)


def test_no_values_give_zero_not_nan() -> None:
    assert percentile([], 99) == 0.0
    assert mean([]) == 0.0


def result(i: int, ttft: float, e2el: float, n_out: int, status: str = "OK") -> RequestResult:
    r = RequestResult(index=i, start_time=0.1 * i, prompt_len=10 + i, status=status)
    r.ttft, r.e2el, r.output_len = ttft, e2el, n_out
    r.itls = [(e2el - ttft) / (n_out - 1)] * (n_out - 1) if n_out > 1 else []
    r.tenant = f"tenant-{i % 2}"
    return r


def test_tpot_excludes_the_first_token() -> None:
    assert result(0, ttft=0.2, e2el=1.2, n_out=11).tpot == pytest.approx(0.1)
    assert result(0, ttft=0.2, e2el=0.2, n_out=1).tpot == 0.0


def test_parse_goodput() -> None:
    assert parse_goodput(["ttft:500", "tpot:12.5"]) == {"ttft": 500.0, "tpot": 12.5}
    assert parse_goodput(None) == {}
    for bad in (["itl:5"], ["ttft"], ["ttft:abc"], ["e2el:0"]):
        with pytest.raises(ValueError):
            parse_goodput(bad)


def test_summary_counts_throughput_and_goodput_against_numpy() -> None:
    rng = np.random.default_rng(11)
    n = 200
    ttft = rng.uniform(0.01, 0.5, n)
    n_out = rng.integers(1, 40, n)
    e2el = ttft + rng.uniform(0.001, 0.08, n) * np.maximum(n_out - 1, 0)
    statuses = ["OK"] * 180 + ["CANCELLED"] * 12 + ["DEADLINE_EXCEEDED"] * 8
    results = [
        result(i, float(ttft[i]), float(e2el[i]), int(n_out[i]), statuses[i]) for i in range(n)
    ]
    summary = summarize(results, duration=20.0, slos={"ttft": 300.0, "tpot": 50.0})

    ok = np.array(statuses) == "OK"
    tpot = np.where(n_out > 1, (e2el - ttft) / np.maximum(n_out - 1, 1), 0.0)
    good = ok & (ttft * 1e3 <= 300.0) & (tpot * 1e3 <= 50.0)
    assert summary["completed"] == 180 and summary["failed"] == 20
    assert summary["failed_by_status"] == {"CANCELLED": 12, "DEADLINE_EXCEEDED": 8}
    assert summary["total_output_tokens"] == n_out[ok].sum()
    assert summary["total_input_tokens"] == sum(10 + i for i in range(180))
    assert summary["request_throughput"] == pytest.approx(180 / 20.0)
    assert summary["output_throughput"] == pytest.approx(n_out[ok].sum() / 20.0)
    assert summary["total_token_throughput"] == pytest.approx(
        (n_out[ok].sum() + sum(10 + i for i in range(180))) / 20.0
    )
    assert 0 < good.sum() < ok.sum()  # the goals bite, so the check means something
    assert summary["request_goodput"] == pytest.approx(good.sum() / 20.0)
    assert summary["p99_ttft_ms"] == pytest.approx(np.percentile(ttft[ok] * 1e3, 99))
    assert summary["median_e2el_ms"] == pytest.approx(np.median(e2el[ok] * 1e3))
    multi = ok & (n_out > 1)
    assert summary["mean_tpot_ms"] == pytest.approx(np.mean(tpot[multi] * 1e3))
    pairs = zip(n_out[multi], tpot[multi], strict=True)
    itls = np.concatenate([np.full(k - 1, t) for k, t in pairs])
    assert summary["p90_itl_ms"] == pytest.approx(np.percentile(itls * 1e3, 90))


def test_goodput_is_none_without_goals_and_zero_when_nothing_succeeds() -> None:
    results = [result(0, 0.1, 0.5, 5, "UNAVAILABLE")]
    assert summarize(results, 1.0, {})["request_goodput"] is None
    summary = summarize(results, 1.0, {"ttft": 1000.0})
    assert summary["request_goodput"] == 0.0 and summary["mean_ttft_ms"] == 0.0


def test_per_tenant_split() -> None:
    results = [result(i, 0.1 * (i + 1), 1.0, 4, "OK" if i != 2 else "CANCELLED") for i in range(4)]
    table = per_tenant(results, duration=2.0)
    assert table["tenant-0"] == {
        "completed": 1,
        "failed": 1,
        "request_throughput": 0.5,
        "output_throughput": 2.0,
        "output_token_share": pytest.approx(1 / 3),  # 4 of the 12 tokens completed
        "median_ttft_ms": pytest.approx(100.0),
        "p99_ttft_ms": pytest.approx(100.0),
        "median_itl_ms": pytest.approx(300.0),  # (1.0 - 0.1) s over 3 gaps
        "p99_itl_ms": pytest.approx(300.0),
    }
    assert table["tenant-1"]["completed"] == 2
    assert table["tenant-1"]["median_ttft_ms"] == pytest.approx(300.0)
