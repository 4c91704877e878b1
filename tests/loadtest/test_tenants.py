"""`python -m loadtest --tenant NAME:KEY:RATE`: several tenants, each its own key and arrivals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frontend.embedded import serve_in_thread
from loadtest.cli import main, redacted
from loadtest.tenants import TenantSpec, parse_tenant, split_by_rate, tenant_arrivals
from scheduler import Engine
from serving.tenants import hash_key
from tests.conftest import STORIES_DIR


def test_parse_tenant_takes_a_key_with_colons_and_names_the_fault() -> None:
    assert parse_tenant("acme:sk:1:2.5") == TenantSpec("acme", "sk:1", 2.5)
    assert parse_tenant("open::4").metadata == [("x-loom-tenant", "open")]
    assert parse_tenant("acme:k:1").metadata == [("authorization", "Bearer k")]
    for bad, words in (
        ("acme", "NAME:KEY:RATE"),
        ("acme:key", "NAME:KEY:RATE"),
        ("a/b:k:1", "NAME must match"),
        ("acme:k:fast", "is not a number"),
        ("acme:k:0", "RATE must be"),
        ("acme:k:inf", "RATE must be"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_tenant(bad)


def test_prompts_are_split_in_proportion_to_the_rates() -> None:
    specs = [TenantSpec("a", "", 8.0), TenantSpec("b", "", 2.0)]
    assert split_by_rate(100, specs) == [80, 20]
    assert split_by_rate(7, specs) == [6, 1]
    assert split_by_rate(3, [TenantSpec("a", "", 100.0), TenantSpec("b", "", 1.0)]) == [2, 1]
    three = [TenantSpec(n, "", 1.0) for n in "abc"]
    assert split_by_rate(10, three) == [4, 3, 3]  # equal remainders: the first gets the spare


def test_each_tenant_keeps_its_own_rate_in_the_merged_arrivals() -> None:
    specs = [TenantSpec("a", "", 40.0), TenantSpec("b", "", 10.0)]
    offsets, owners = tenant_arrivals(2000, specs, 1.0, np.random.default_rng(0))
    assert offsets == sorted(offsets) and owners.count(0) == 1600 and owners.count(1) == 400
    for index, rate in ((0, 40.0), (1, 10.0)):
        mine = [t for t, o in zip(offsets, owners, strict=True) if o == index]
        assert (len(mine) - 1) / mine[-1] == pytest.approx(rate, rel=0.1)


def test_saved_command_lines_hide_the_keys() -> None:
    argv = ["--tenant", "a:sk-secret:4", "--api-key", "sk-other", "--num-prompts", "5"]
    assert redacted(argv) == ["--tenant", "a:***:4", "--api-key", "***", "--num-prompts", "5"]


def test_two_tenants_on_a_live_server_are_reported_apart(tmp_path: Path, capsys) -> None:
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(
        f'[tenants.alpha]\napi_key_sha256 = ["{hash_key("k-alpha")}"]\n\n'
        f'[tenants.beta]\napi_key_sha256 = ["{hash_key("k-beta")}"]\n'
    )
    engine = Engine.from_model_dir(STORIES_DIR, num_kv_blocks=128, queue_policy="fair")
    result_path = tmp_path / "result.json"
    with serve_in_thread(engine, tenants=str(tenants)) as server:
        argv = ["--target", server.target, "--no-progress", "--save-result", str(result_path)]
        argv += ["--num-prompts", "20", "--input-len", "8", "--output-len", "6", "--seed", "1"]
        argv += ["--tenant", "alpha:k-alpha:60", "--tenant", "beta:k-beta:20"]
        assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(result_path.read_text())
    assert result["completed"] == 20
    assert sorted(result["tenants"]) == ["alpha"] * 15 + ["beta"] * 5
    alpha, beta = result["per_tenant"]["alpha"], result["per_tenant"]["beta"]
    assert (alpha["completed"], beta["completed"]) == (15, 5)
    assert alpha["output_token_share"] == pytest.approx(0.75)
    assert alpha["median_ttft_ms"] > 0 and beta["p99_itl_ms"] > 0
    assert result["tenant_rates"] == {"alpha": 60.0, "beta": 20.0}
    assert "k-alpha" not in result["command"] and "alpha:***:60" in result["command"]
    assert "Per tenant" in out and "\nalpha " in out and "\nbeta " in out


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--tenant", "a:k:1", "--api-key", "k"], "does not go with --api-key"),
        (["--tenant", "a:k:1", "--request-rate", "3"], "drop --request-rate"),
        (["--tenant", "a:k:1", "--tenant", "a:j:2"], "its own NAME"),
        (["--tenant", "a:k:1", "--tenant", "b:j:2", "--num-prompts", "1"], "every --tenant"),
    ],
)
def test_conflicting_tenant_flags_exit_2(flags: list[str], words: str, capsys) -> None:
    assert main(["--num-prompts", "4", *flags]) == 2
    assert words in capsys.readouterr().err
