"""`python -m client` against a real server."""

from __future__ import annotations

import os
import subprocess
import sys

from frontend.embedded import ServerHandle
from scheduler import SamplingParams
from tests.conftest import REPO_ROOT
from tests.server.conftest import make_engine


def run_client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_generate_prints_text_and_a_logprob_table(server: ServerHandle) -> None:
    params = SamplingParams(max_tokens=8, temperature=0, logprobs=True)
    [want] = make_engine().generate(["Once upon a time"], params)
    for extra in ([], ["--stream"]):
        result = run_client(
            "generate", "Once upon a time", "--max-tokens", "8", "--temperature", "0",
            "--logprobs", "--target", server.target, *extra,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == want.text
        assert lines[1].split() == ["pos", "token_id", "piece", "logprob"]
        rows = [line.split() for line in lines[2:]]
        assert [int(row[1]) for row in rows] == want.token_ids
        for row, logprob in zip(rows, want.logprobs, strict=True):
            assert abs(float(row[-1]) - logprob) < 1e-3
        assert "finish_reason=length" in result.stderr


def test_the_sampling_flags_reach_the_server(server: ServerHandle) -> None:
    common = ["generate", "Once upon a time", "--max-tokens", "24", "--target", server.target]
    greedy = run_client(*common, "--temperature", "0")
    only_best = run_client(*common, "--temperature", "1.5", "--seed", "4", "--min-p", "1")
    drawn = run_client(*common, "--temperature", "1.5", "--seed", "4", "--top-k", "40")
    assert greedy.returncode == only_best.returncode == drawn.returncode == 0
    assert only_best.stdout == greedy.stdout != drawn.stdout
    refused = run_client(*common, "--min-p", "2")
    assert refused.returncode == 1 and "INVALID_ARGUMENT: min_p must be in [0, 1]" in refused.stderr


def test_info_tokenize_and_errors(server: ServerHandle) -> None:
    info = run_client("info", "--target", server.target)
    assert info.returncode == 0
    assert 'model_name: "stories260K"' in info.stdout
    load = run_client("load", "--target", server.target)
    assert load.returncode == 0
    assert "num_kv_blocks: 256" in load.stdout.splitlines()
    # An idle server's zeros are printed too, every field of Load on its own line.
    assert {"num_requests_running: 0", "draining: False"} <= set(load.stdout.splitlines())
    tokens = run_client("tokenize", "Once upon", "--add-bos", "--target", server.target)
    assert tokens.stdout.split()[:2] == ["1", "'<s>'"]
    # By default as generate counts the prompt: BOS first; --no-add-bos gives the text's own.
    default = run_client("tokenize", "Once upon", "--target", server.target)
    assert default.stdout == tokens.stdout
    bare = run_client("tokenize", "Once upon", "--no-add-bos", "--target", server.target)
    assert bare.stdout.splitlines() == tokens.stdout.splitlines()[1:]
    aborted = run_client("abort", "no-such-id", "--target", server.target)
    assert aborted.returncode == 1 and aborted.stdout == "no-such-id: not found\n"
    bad = run_client("generate", "Hi", "--temperature", "-1", "--target", server.target)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "temperature" in bad.stderr
