"""`python -m loadtest --backend openai` against a real server's HTTP API on loopback: the
same workloads and report keys as over gRPC; and options checked before anything is sent."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from frontend.embedded import ServerHandle, serve_in_thread
from loadtest.cli import main
from scheduler import Engine
from tests.conftest import STORIES_DIR
from tests.loadtest.required_keys import REQUIRED_KEYS
from tests.loadtest.test_live_server import wait_idle

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    handle = serve_in_thread(Engine.from_model_dir(STORIES_DIR, num_kv_blocks=512), http_port=0)
    yield handle
    handle.stop(grace=0)


def run(server: ServerHandle, tmp_path: Path, *flags: str) -> dict:
    path = tmp_path / "result.json"
    argv = ["--backend", "openai", "--base-url", server.base_url, "--no-progress"]
    assert main([*argv, "--save-result", str(path), *flags]) == 0
    return json.loads(path.read_text())


def finished(server: ServerHandle) -> float:
    registry = server.frontend.metrics.registry
    return sum(
        registry.get_sample_value(
            "loom:request_finished_total",
            {"model": "stories260K", "tenant": "default", "finish_reason": reason},
        )
        or 0.0
        for reason in ("stop", "length", "abort", "error")
    )


def test_random_run_reports_the_keys_of_the_grpc_backend(server, tmp_path) -> None:
    flags = ("--num-prompts", "8", "--input-len", "20", "--output-len", "12", "--seed", "2")
    result = run(server, tmp_path, *flags, "--max-concurrency", "4")
    grpc_path = tmp_path / "grpc.json"
    assert (
        main(["--target", server.target, "--no-progress", "--save-result", str(grpc_path), *flags])
        == 0
    )
    over_grpc = json.loads(grpc_path.read_text())
    assert set(REQUIRED_KEYS) <= set(result) and set(result) == set(over_grpc)
    assert result["completed"] == 8 and result["failed"] == 0
    assert result["total_input_tokens"] == 8 * 20 == over_grpc["total_input_tokens"]
    assert result["output_lens"] == [12] * 8 == over_grpc["output_lens"]
    assert all(0 < t < e for t, e in zip(result["ttfts"], result["e2els"], strict=True))
    assert all(1 <= len(gaps) <= 11 for gaps in result["itls"])
    assert result["backend"] == "openai" and result["target"] == server.base_url


def test_text_prompts_are_counted_by_the_servers_tokenizer(server, tmp_path) -> None:
    result = run(
        server,
        tmp_path,
        *("--dataset", "jsonl", "--dataset-path", str(FIXTURES / "requests_small.jsonl")),
        *("--num-prompts", "4", "--ignore-eos"),
    )
    assert result["completed"] == 4 and result["output_lens"] == [8, 3, 8, 3]
    assert result["total_input_tokens"] == sum(result["input_lens"]) > 0


def test_cancels_and_deadlines_are_counted_by_status(server, tmp_path) -> None:
    result = run(
        server,
        tmp_path,
        *("--num-prompts", "6", "--input-len", "16", "--output-len", "480", "--seed", "1"),
        *("--cancel-rate", "0.5", "--cancel-max-delay", "0.05", "--timeout", "0.4"),
    )
    planned = result["cancel_planned"]
    assert result["statuses"] == ["CANCELLED" if p else "DEADLINE_EXCEEDED" for p in planned]
    wait_idle(server.engine)  # the closed connections aborted every request


def test_plot_without_matplotlib_is_refused_before_sending(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    before = finished(server)
    argv = ["--backend", "openai", "--base-url", server.base_url, "--num-prompts", "2"]
    assert main([*argv, "--plot", str(tmp_path / "plot.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert finished(server) == before
    assert main(["--backend", "openai", "--num-prompts", "2"]) == 2
    assert "--backend openai needs --base-url" in capsys.readouterr().err
