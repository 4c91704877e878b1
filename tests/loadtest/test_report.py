"""The result table, the saved JSON, the progress bar and the plot."""

from __future__ import annotations

import io
import json
from pathlib import Path

from loadtest.metrics import RequestResult, summarize
from loadtest.plot import client_timeline, save_plot
from loadtest.progress import ProgressBar
from loadtest.report import format_table, result_document, save_result
from loadtest.server_metrics import parse_gauges
from tests.loadtest.required_keys import REQUIRED_KEYS


def sample_results() -> list[RequestResult]:
    a = RequestResult(index=1, start_time=0.5, prompt_len=8, ttft=0.25, e2el=1.0, output_len=4)
    a.itls = [0.25, 0.25, 0.25]
    b = RequestResult(index=0, start_time=0.0, prompt_len=8, ttft=0.5, e2el=2.0, output_len=2)
    b.itls = [1.5]
    c = RequestResult(index=2, start_time=1.0, prompt_len=8, status="DEADLINE_EXCEEDED")
    c.e2el, c.error = 0.75, "Deadline Exceeded"
    return [a, b, c]


def test_table_shows_counts_by_status_throughput_and_latencies() -> None:
    summary = summarize(sample_results(), duration=2.0, slos={"ttft": 300.0})
    table = format_table(summary, "stories260K")
    assert "Serving Benchmark Result (stories260K)" in table
    lines = {
        line.split(":")[0].strip(): line.split()[-1] for line in table.splitlines() if ":" in line
    }
    assert lines["Successful requests"] == "2"
    assert lines["Failed requests"] == "1"
    assert lines["DEADLINE_EXCEEDED"] == "1"
    assert lines["Output token throughput (tok/s)"] == "3.00"
    assert lines["Request goodput (req/s, ttft<=300ms)"] == "0.50"
    assert lines["Median TTFT (ms)"] == "375.00"
    # ITLs 250, 250, 250, 1500 ms: rank 0.99 * 3 = 2.97 -> 250 + 0.97 * 1250.
    assert lines["P99 ITL (ms)"] == "1462.50"
    for metric in ("TTFT", "TPOT", "ITL", "E2EL"):
        for stat in ("Mean", "Median", "P90", "P99"):
            assert f"{stat} {metric} (ms):" in table


def test_saved_result_has_every_key_and_per_request_arrays_in_order(tmp_path: Path) -> None:
    results = sample_results()
    summary = summarize(results, duration=2.0, slos={})
    doc = result_document(summary, results, {"model_name": "m", "request_rate": "inf"}, {})
    path = tmp_path / "out" / "result.json"
    save_result(path, doc)
    saved = json.loads(path.read_text())
    assert set(REQUIRED_KEYS) <= set(saved)
    assert saved["ttfts"] == [0.5, 0.25, 0.0]
    assert saved["itls"] == [[1.5], [0.25, 0.25, 0.25], []]
    assert saved["errors"] == ["", "", "Deadline Exceeded"]
    assert saved["statuses"] == ["OK", "OK", "DEADLINE_EXCEEDED"]
    assert saved["request_goodput"] is None
    assert saved["failed_by_status"] == {"DEADLINE_EXCEEDED": 1}


def test_progress_bar_logs_every_tenth_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(20, stream=stream)
    for i in range(20):
        bar.update(ok=i % 5 != 0)
    bar.close()
    lines = stream.getvalue().splitlines()
    # The first request, then each tenth of the way.
    assert len(lines) == 11
    assert lines[0].startswith("[#" + "." * 29 + "] 1/20 ok 0 failed 1")
    assert lines[-1].startswith("[" + "#" * 30 + "] 20/20 ok 16 failed 4")


def test_disabled_progress_bar_prints_nothing() -> None:
    stream = io.StringIO()
    bar = ProgressBar(3, enabled=False, stream=stream)
    bar.update(ok=True)
    bar.close()
    assert stream.getvalue() == "" and bar.num_ok == 1


def test_timeline_counts_waiting_then_running_requests() -> None:
    times, waiting, running = client_timeline(sample_results())
    # b sent 0 (token 0.5, done 2.0); a sent 0.5 (token 0.75, done 1.5); c sent 1.0, no token,
    # failed at 1.75.
    assert list(zip(times, waiting, running, strict=True)) == [
        (0.0, 0, 0),
        (0.0, 1, 0),
        (0.5, 0, 1),  # b's first token and a's send happen at the same instant
        (0.5, 1, 1),
        (0.75, 0, 2),
        (1.0, 1, 2),
        (1.5, 1, 1),
        (1.75, 0, 1),
        (2.0, 0, 0),
    ]


def test_prometheus_gauges_are_summed_over_labels() -> None:
    text = """# HELP loom:num_requests_running Requests running
# TYPE loom:num_requests_running gauge
loom:num_requests_running{model_name="m"} 3.0
loom:num_requests_running_other{model_name="m"} 9.0
loom:num_requests_waiting{model_name="m",tenant="a"} 2.0
loom:num_requests_waiting{model_name="m",tenant="b"} 5.0
loom:prompt_tokens_total{model_name="m"} 100.0
"""
    assert parse_gauges(text) == {"running": 3.0, "waiting": 7.0}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    save_plot(path, sample_results(), "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
