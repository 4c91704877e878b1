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


def test_info_tokenize_and_errors(server: ServerHandle) -> None:
    info = run_client("info", "--target", server.target)
    assert info.returncode == 0
    assert 'model_name: "stories260K"' in info.stdout
    load = run_client("load", "--target", server.target)
    assert load.returncode == 0
    assert "num_kv_blocks: 256" in load.stdout.splitlines()
    tokens = run_client("tokenize", "Once upon", "--add-bos", "--target", server.target)
    assert tokens.stdout.split()[:2] == ["1", "'<s>'"]
    bad = run_client("generate", "Hi", "--temperature", "-1", "--target", server.target)
    assert bad.returncode == 1
    assert "INVALID_ARGUMENT" in bad.stderr and "temperature" in bad.stderr
