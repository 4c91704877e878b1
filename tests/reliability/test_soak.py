"""The short soak of CI: `python -m loadtest soak` against a live server (300 calls, a fifth
cancelled, deadlines, clients hanging up, three tenants, three rounds). Every call ends as its
fate allows, every round ends idle on /metrics, and the engine itself holds nothing after."""

from __future__ import annotations

import json
from pathlib import Path

from frontend.embedded import serve_in_thread
from loadtest.cli import main
from loadtest.soak import round_sizes
from loadtest.soak_cli import check_loopback
from tests.reliability.conftest import assert_idle
from tests.server.conftest import make_engine


def test_a_short_soak_loses_nothing_and_leaks_nothing(tmp_path: Path, capsys) -> None:
    # Room for a few dozen short calls: preemptions happen, the prefix cache fills.
    handle = serve_in_thread(make_engine(device="cpu", num_kv_blocks=64), metrics_port=0)
    try:
        result = tmp_path / "soak.json"
        code = main(
            [
                "soak",
                "--target", handle.target,
                "--metrics-url", f"http://127.0.0.1:{handle.metrics_port}/metrics",
                "--streams", "300",
                "--rounds", "3",
                "--cancel-fraction", "0.2",
                "--duration", "120",
                "--seed", "7",
                "--save-result", str(result),
            ]
        )  # fmt: skip
        printed = capsys.readouterr().out
        assert code == 0, printed
        assert_idle(handle)
    finally:
        handle.stop(grace=0)
    report = json.loads(result.read_text())
    assert report["passed"] and report["num_lost"] == 0
    assert len(report["calls"]) == 300
    assert [check["idle"] for check in report["idle_checks"]] == [True, True, True]
    assert all(check["blocks_used"] == 0 for check in report["idle_checks"])
    assert report["idle_checks"][-1]["prefix_cache_blocks"] > 0  # retained, not held
    by_status = report["by_status"]
    assert by_status["OK"] > 150 and by_status["CANCELLED"] > 20, by_status
    assert set(by_status) <= {"OK", "CANCELLED", "DEADLINE_EXCEEDED"}, by_status
    fates = {call["fate"] for call in report["calls"]}
    assert fates == {"complete", "cancel", "deadline", "disconnect"}
    assert {call["tenant"] for call in report["calls"]} == {"soak-0", "soak-1", "soak-2"}
    assert report["rss_samples"] and report["rss_samples"][0][1] > 0
    assert round_sizes(300, 3) == [100, 100, 100] and round_sizes(10, 3) == [4, 3, 3]
    assert "Calls lost:" in printed and "PASS" in printed


def test_the_soak_is_for_this_machine_only() -> None:
    check_loopback("127.0.0.1:50051", "http://localhost:9000/metrics")
    check_loopback("[::1]:50051", "http://[::1]:9000/metrics")
    for target, url in (
        ("10.0.0.5:50051", "http://127.0.0.1:9000/metrics"),
        ("127.0.0.1:50051", "http://example.com:9000/metrics"),
    ):
        try:
            check_loopback(target, url)
        except ValueError as exc:
            assert "must be on this machine" in str(exc)
        else:
            raise AssertionError(f"{target} {url} accepted")
    assert main(["soak", "--target", "10.0.0.5:1", "--metrics-url", "http://x/metrics"]) == 2
