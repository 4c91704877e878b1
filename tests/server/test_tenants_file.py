"""The tenants file: hashed keys, the fields and their defaults, and errors that name the
file, the line and the field."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from serving.auth import Authenticator, AuthError
from serving.tenants import Tenant, directory_from_api_keys, hash_key, hash_line, load_tenants
from tests.conftest import REPO_ROOT

KEY_A, KEY_B = "sk-acme-1", "sk-bolt-1"
GOOD = f"""\
# two tenants
[tenants.acme]
api_key_sha256 = ["{hash_key(KEY_A)}", "{hash_key("sk-acme-2")}"]
weight = 2.0
priority = -1
max_concurrent_requests = 64
max_tokens_per_minute = 200000
max_tokens_per_request = 4096
deadline_ms = 30000

[tenants.bolt]
api_key_sha256 = ["{hash_key(KEY_B).upper()}"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def test_a_good_file_gives_every_field_and_the_defaults(tmp_path) -> None:
    directory = load_tenants(write(tmp_path, GOOD))
    assert directory.tenants == {
        "acme": Tenant("acme", 2.0, -1, 64, 200000, 4096, deadline_ms=30000),
        "bolt": Tenant("bolt"),
    }
    assert directory.num_keys == 3
    assert directory.find_key(KEY_A) is directory.tenants["acme"]
    assert directory.find_key("sk-acme-2").name == "acme"
    assert directory.find_key(KEY_B).name == "bolt"  # upper-case hex is read as hex
    assert directory.find_key("sk-acme-3") is None
    assert directory.weights() == {"acme": 2.0, "bolt": 1.0}


def test_keys_are_compared_by_their_sha256(tmp_path) -> None:
    assert hash_key("test") == hashlib.sha256(b"test").hexdigest()
    assert hash_line("test") == f'api_key_sha256 = ["{hashlib.sha256(b"test").hexdigest()}"]'
    # The file holds only hashes: the key text itself appears nowhere in it.
    assert KEY_A not in GOOD


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "[tenants.acme]\nweight = 2\n",
            "tenants.toml:1: tenants.acme: api_key_sha256 is required",
        ),
        (
            '[tenants.acme]\napi_key_sha256 = ["abc"]\n',
            "tenants.toml:2: tenants.acme.api_key_sha256: 'abc' is not a hex SHA-256",
        ),
        (
            f'[tenants.a]\napi_key_sha256 = ["{hash_key("k")}"]\n\n[tenants.b]\n'
            f'api_key_sha256 = ["{hash_key("k")}"]\n',
            "tenants.toml:5: tenants.b.api_key_sha256: key hash also given to tenant 'a'",
        ),
        (
            f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\n\nweight = 0\n',
            "tenants.toml:4: tenants.acme.weight: must be a number > 0, got 0",
        ),
        (
            f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\npriority = "high"\n',
            "tenants.toml:3: tenants.acme.priority: must be an integer, got 'high'",
        ),
        (
            f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\nmax_tokens_per_minute = 0\n',
            "tenants.toml:3: tenants.acme.max_tokens_per_minute: must be an integer >= 1, got 0",
        ),
        (
            f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\ndeadline_ms = 0.5\n',
            "tenants.toml:3: tenants.acme.deadline_ms: must be an integer >= 1, got 0.5",
        ),
        (
            f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\nmax_concurrency = 4\n',
            "tenants.toml:3: tenants.acme.max_concurrency: unknown field",
        ),
        (
            f'[tenants."a/b"]\napi_key_sha256 = ["{hash_key("k")}"]\n',
            "tenants.toml:1: tenants.a/b: tenant name must match",
        ),
        ("[tenant.acme]\n", "tenants.toml:1: tenant: unknown table or key"),
        ("# nothing here\n", "tenants.toml: no tenants"),
        ("[tenants.acme\n", "tenants.toml: not valid TOML: "),
    ],
)
def test_a_malformed_file_names_the_file_line_and_field(tmp_path, text: str, where: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        load_tenants(path)
    assert str(err.value).startswith(f"{tmp_path}/{where}"), str(err.value)


def test_api_keys_become_a_tenant_each_with_the_defaults() -> None:
    directory = directory_from_api_keys({"key-a": "alice", "key-b": "bob", "key-c": "bob"})
    assert directory.tenants == {"alice": Tenant("alice"), "bob": Tenant("bob")}
    assert directory.find_key("key-c").name == "bob"


def test_authenticate_takes_grpc_metadata_or_an_http_header_mapping(tmp_path) -> None:
    auth = Authenticator(load_tenants(write(tmp_path, GOOD)))
    assert auth.authenticate([("authorization", f"Bearer {KEY_A}")]).name == "acme"
    assert auth.authenticate({"Authorization": f"bearer {KEY_B}"}).name == "bolt"
    for headers, code in (
        ({}, "UNAUTHENTICATED"),
        ({"authorization": "Bearer nope"}, "UNAUTHENTICATED"),
        ({"authorization": KEY_A}, "UNAUTHENTICATED"),
        ({"authorization": f"Bearer {KEY_A}", "x-loom-tenant": "bolt"}, "PERMISSION_DENIED"),
    ):
        with pytest.raises(AuthError) as err:
            auth.authenticate(headers)
        assert err.value.code == code
    assert Authenticator().authenticate({"x-loom-tenant": "zed"}) == Tenant("zed")


def run_scheduler(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "frontend", *args],
        cwd=REPO_ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hash_key_prints_the_line_for_a_key_on_stdin() -> None:
    result = run_scheduler("hash-key", stdin="sk-acme-1\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == hash_line("sk-acme-1") + "\n"
    empty = run_scheduler("hash-key", stdin="\n")
    assert empty.returncode == 2 and "no API key on stdin" in empty.stderr


def test_serve_refuses_a_malformed_file_before_loading_the_model(tmp_path) -> None:
    path = write(tmp_path, f'[tenants.acme]\napi_key_sha256 = ["{hash_key("k")}"]\nweight = -1\n')
    result = run_scheduler("serve", "--tenants", str(path))
    assert result.returncode == 2
    assert f"{path}:3: tenants.acme.weight: must be a number > 0, got -1" in result.stderr
    assert "loaded" not in result.stderr
    both = run_scheduler("serve", "--tenants", str(write(tmp_path, GOOD)), "--api-keys", str(path))
    assert both.returncode == 2
