"""`python -m loadtest` against a real Loom server on loopback (bundled stories260K)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentencepiece as spm

from frontend.embedded import ServerHandle, serve_in_thread
from loadtest.cli import main
from scheduler import Engine
from tests.conftest import STORIES_DIR
from tests.loadtest.required_keys import REQUIRED_KEYS

FIXTURES = Path(__file__).parent / "fixtures"
JSONL = "requests_small.jsonl"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = serve_in_thread(Engine.from_model_dir(STORIES_DIR, num_kv_blocks=512))
    yield handle
    handle.stop(grace=0)


def run(server: ServerHandle, tmp_path: Path, *flags: str) -> dict:
    path = tmp_path / "result.json"
    argv = ["--target", server.target, "--no-progress", "--save-result", str(path), *flags]
    assert main(argv) == 0
    return json.loads(path.read_text())


def max_overlap(starts: list[float], durations: list[float]) -> int:
    # At equal times an end comes before a start: the next request is sent after one ends.
    events = sorted(
        [(s, 1) for s in starts] + [(s + d, -1) for s, d in zip(starts, durations, strict=True)]
    )
    level = peak = 0
    for _, change in events:
        level += change
        peak = max(peak, level)
    return peak


def wait_idle(engine: Engine, timeout: float = 10.0) -> None:
    """The server freed every block: the client's cancels and deadlines reached it."""
    deadline = time.monotonic() + timeout
    while engine.has_unfinished() or engine.stats().num_free_blocks != engine.stats().num_blocks:
        assert time.monotonic() < deadline, "requests still hold KV blocks"
        time.sleep(0.01)


def test_random_run_saves_every_key_with_counts_that_add_up(
    server: ServerHandle, tmp_path: Path
) -> None:
    result = run(
        server,
        tmp_path,
        *("--num-prompts", "12", "--input-len", "20", "--output-len", "24"),
        *("--max-concurrency", "5", "--tenants", "3", "--seed", "3"),
        *("--goodput", "ttft:60000", "tpot:60000"),
    )
    assert set(REQUIRED_KEYS) <= set(result)
    assert result["completed"] == 12 and result["failed"] == 0
    assert result["failed_by_status"] == {}
    assert result["total_input_tokens"] == 12 * 20
    assert result["total_output_tokens"] == 12 * 24
    assert result["output_lens"] == [24] * 12
    duration = result["duration"]
    assert result["request_throughput"] == pytest.approx(12 / duration)
    assert result["output_throughput"] == pytest.approx(12 * 24 / duration)
    assert result["total_token_throughput"] == pytest.approx(12 * 44 / duration)
    # Goals no request can miss: goodput equals throughput.
    assert result["request_goodput"] == pytest.approx(result["request_throughput"])
    assert all(0 < t < e for t, e in zip(result["ttfts"], result["e2els"], strict=True))
    # Each request streamed its 24 tokens in 2..24 messages, so 1..23 gaps.
    assert all(1 <= len(gaps) <= 23 for gaps in result["itls"])
    assert result["errors"] == [""] * 12
    for stat in ("mean", "median", "p90", "p99"):
        assert result[f"{stat}_ttft_ms"] > 0 and result[f"{stat}_e2el_ms"] > 0
    assert result["p99_e2el_ms"] >= result["median_e2el_ms"]
    assert max_overlap(result["start_times"], result["e2els"]) <= 5
    assert result["tenants"] == [f"tenant-{i % 3}" for i in range(12)]
    assert {t: v["completed"] for t, v in result["per_tenant"].items()} == {
        "tenant-0": 4,
        "tenant-1": 4,
        "tenant-2": 4,
    }


def test_cancelled_and_timed_out_requests_are_counted_by_status(
    server: ServerHandle, tmp_path: Path
) -> None:
    # 480 tokens take the server well over a second; cancels come within 50 ms, the
    # deadline at 400 ms, so every request ends one of the two ways.
    result = run(
        server,
        tmp_path,
        *("--num-prompts", "8", "--input-len", "16", "--output-len", "480", "--seed", "1"),
        *("--cancel-rate", "0.5", "--cancel-max-delay", "0.05", "--timeout", "0.4"),
    )
    planned = result["cancel_planned"]
    num_cancelled = sum(planned)
    assert 0 < num_cancelled < 8
    assert result["completed"] == 0 and result["failed"] == 8
    assert result["failed_by_status"] == {
        "CANCELLED": num_cancelled,
        "DEADLINE_EXCEEDED": 8 - num_cancelled,
    }
    expected = ["CANCELLED" if p else "DEADLINE_EXCEEDED" for p in planned]
    assert result["statuses"] == expected
    assert result["total_output_tokens"] == 0 and result["request_throughput"] == 0.0
    assert all(e for e in result["errors"])
    wait_idle(server.engine)


def test_deadlines_are_sent_per_request_and_those_met_counted(
    server: ServerHandle, tmp_path: Path
) -> None:
    # 480 tokens cannot finish within 30 ms; 8 tokens finish well within 60 s.
    flags = ("--num-prompts", "12", "--input-len", "8", "--seed", "3", "--max-concurrency", "1")
    short = run(server, tmp_path, *flags, "--output-len", "480", "--deadlines", "30")
    assert short["deadlines_ms"] == [30] * 12 and short["deadlines_met"] == 0
    assert short["failed_by_status"] == {"DEADLINE_EXCEEDED": 12}
    assert "cannot finish by its deadline" in short["errors"][0]
    mixed = run(server, tmp_path, *flags, "--output-len", "8", "--deadlines", "30,60000")
    assert set(mixed["deadlines_ms"]) == {30, 60000}
    num_long = mixed["deadlines_ms"].count(60000)
    assert num_long <= mixed["deadlines_met"] <= 12
    assert mixed["deadline_goodput"] == mixed["deadlines_met"] / 12
    wait_idle(server.engine)


def test_jsonl_workload_is_tokenized_by_the_server_and_plotted(
    server: ServerHandle, tmp_path: Path
) -> None:
    plot = tmp_path / "plot.png"
    result = run(
        server,
        tmp_path,
        *("--dataset", "jsonl", "--dataset-path", str(FIXTURES / JSONL)),
        *("--num-prompts", "4", "--ignore-eos", "--request-rate", "50", "--plot", str(plot)),
    )
    assert result["completed"] == 4
    assert result["output_lens"] == [8, 3, 8, 3]
    # Prompt lengths come from the server's usage: the prompt's tokens plus BOS.
    sp = spm.SentencePieceProcessor(model_file=str(STORIES_DIR / "tokenizer.model"))
    prompts = [
        json.loads(line)["prompt"] for line in FIXTURES.joinpath(JSONL).open() if line.strip()
    ]
    expected = [len(sp.encode(p)) + 1 for p in prompts]
    assert result["input_lens"] == expected * 2
    assert result["total_input_tokens"] == sum(result["input_lens"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_server_timeline_is_sampled_from_its_metrics_endpoint(tmp_path: Path) -> None:
    engine = Engine.from_model_dir(STORIES_DIR, num_kv_blocks=128)
    with serve_in_thread(engine, metrics_port=0) as server:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        result = run(
            server,
            tmp_path,
            *("--num-prompts", "6", "--input-len", "8", "--output-len", "200"),
            *("--metrics-url", url, "--plot", str(tmp_path / "plot.png")),
        )
    timeline = result["server_timeline"]
    assert timeline["num_errors"] == 0
    assert len(timeline["times"]) == len(timeline["running"]) == len(timeline["waiting"]) >= 2
    assert timeline["times"] == sorted(timeline["times"])
    # Six requests sent at once: the server reports them running (never more than six).
    assert 1 <= max(timeline["running"]) <= 6
    assert result["completed"] == 6


def test_workload_longer_than_the_model_is_refused_before_sending(
    server: ServerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--target", server.target, "--num-prompts", "2", "--input-len", "500"]
    assert main([*argv, "--output-len", "100", "--no-progress"]) == 2
    assert "exceeds the model's maximum length 512" in capsys.readouterr().err


def test_api_keys_are_sent_one_per_tenant_and_refusals_counted_by_status(tmp_path: Path) -> None:
    engine = Engine.from_model_dir(STORIES_DIR, num_kv_blocks=128)
    with serve_in_thread(engine, api_keys={"k-alpha": "alpha", "k-beta": "beta"}) as server:
        good = run(
            server,
            tmp_path,
            *("--num-prompts", "6", "--input-len", "8", "--output-len", "4"),
            *("--api-key", "k-alpha", "--api-key", "k-beta"),
        )
        # The first key also serves GetModelInfo; the second is refused request by request.
        mixed = run(
            server,
            tmp_path,
            *("--num-prompts", "6", "--input-len", "8", "--output-len", "4"),
            *("--api-key", "k-alpha", "--api-key", "k-wrong"),
        )
    assert good["completed"] == 6
    assert good["tenants"] == ["key-0", "key-1"] * 3
    assert {k: v["completed"] for k, v in good["per_tenant"].items()} == {"key-0": 3, "key-1": 3}
    assert mixed["completed"] == 3 and mixed["failed_by_status"] == {"UNAUTHENTICATED": 3}
    assert mixed["statuses"] == ["OK", "UNAUTHENTICATED"] * 3
    assert mixed["total_output_tokens"] == 3 * 4


def test_lengths_left_out_are_fitted_to_the_served_model(
    server: ServerHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # vLLM's defaults (1024 in, 128 out) do not fit the bundled model's 512 tokens.
    result = run(server, tmp_path, "--num-prompts", "2")
    chosen = "--input-len 384 --output-len 128 (the model holds 512 tokens)"
    assert chosen in capsys.readouterr().err
    assert result["completed"] == 2 and result["total_output_tokens"] == 2 * 128
    # With the 256-token prefix and lengths drawn up to 1.5 times: 256 + 1.5 * (128 + 42).
    flags = ["--dataset", "shared-prefix", "--range-ratio", "0.5"]
    assert run(server, tmp_path, "--num-prompts", "4", *flags)["completed"] == 4
    assert "--input-len 128 --output-len 42" in capsys.readouterr().err


def test_a_result_path_that_cannot_be_written_ends_the_run_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at the target: the run must end at the option, before any connection.
    argv = ["--target", "127.0.0.1:9", "--no-progress", "--num-prompts", "1"]
    assert main([*argv, "--save-result", "/proc/loom-result.json"]) == 2
    assert "--save-result /proc/loom-result.json: cannot write it" in capsys.readouterr().err
    kept = tmp_path / "kept.json"
    kept.write_text("earlier results")
    empty = tmp_path / "new" / "result.json"
    assert main([*argv, "--save-result", str(kept), "--plot", str(empty)]) == 1  # no server
    assert kept.read_text() == "earlier results" and not empty.exists()
