"""TLS and mutual TLS on the gRPC port, with certificates this test makes."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from client import Client
from frontend.cli import check_health
from frontend.embedded import ServerHandle
from tests.conftest import REPO_ROOT
from tests.server.conftest import engine_is_idle, make_engine, wait_until
from tests.server.tls_certs import Certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("other"), ca_name="Someone else's CA")


def tls_server(start_server, certs: Certificates, mutual: bool) -> ServerHandle:
    options = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    if mutual:
        options["tls_client_ca"] = str(certs.ca)
    return start_server(make_engine(), **options)


def test_tls_serves_a_client_that_trusts_the_ca(start_server, certs) -> None:
    server = tls_server(start_server, certs, mutual=False)
    with Client(server.target, tls_ca=certs.ca) as client:
        reply = client.generate("Once upon a time", max_tokens=4, ignore_eos=True)
    assert reply.usage.completion_tokens == 4
    assert check_health(server.target, "", 5.0, tls_ca=str(certs.ca)) == 0


def test_a_tls_server_refuses_plaintext_and_unknown_cas(start_server, certs, other_ca) -> None:
    server = tls_server(start_server, certs, mutual=False)
    for client in (Client(server.target), Client(server.target, tls_ca=other_ca.ca)):
        with client, pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=2, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert check_health(server.target, "", 5.0) == 1  # plaintext health check: no answer
    wait_until(lambda: engine_is_idle(server.engine), 5.0, "the engine idle")


def test_mutual_tls_needs_a_client_certificate_the_ca_signed(start_server, certs, other_ca):
    server = tls_server(start_server, certs, mutual=True)
    with Client(
        server.target, tls_ca=certs.ca, tls_cert=certs.client_cert, tls_key=certs.client_key
    ) as client:
        assert client.generate("Hi", max_tokens=3, ignore_eos=True).usage.completion_tokens == 3
    strangers = (
        Client(server.target, tls_ca=certs.ca),  # no certificate
        Client(
            server.target,
            tls_ca=certs.ca,
            tls_cert=other_ca.client_cert,
            tls_key=other_ca.client_key,
        ),  # a certificate from another CA
    )
    for client in strangers:
        with client, pytest.raises(grpc.RpcError) as err:
            client.generate("Hi", max_tokens=2, timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    mtls = {"tls_cert": str(certs.client_cert), "tls_key": str(certs.client_key)}
    assert check_health(server.target, "", 5.0, tls_ca=str(certs.ca), **mtls) == 0
    assert check_health(server.target, "", 5.0, tls_ca=str(certs.ca)) == 1


def test_the_client_cli_speaks_mutual_tls(start_server, certs) -> None:
    server = tls_server(start_server, certs, mutual=True)
    flags = ["--target", server.target, "--tls-ca", str(certs.ca)]
    mtls = ["--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key)]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "client", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = run("generate", "Once upon a time", "--max-tokens", "3", "--ignore-eos", *flags, *mtls)
    assert ok.returncode == 0, ok.stderr
    assert "completion_tokens=3" in ok.stderr
    refused = run("generate", "Hi", "--timeout", "5", *flags)
    assert refused.returncode == 1
    assert "UNAVAILABLE" in refused.stderr
    half = run("info", *flags, "--tls-cert", str(certs.client_cert))
    assert half.returncode == 2
    assert "tls_cert and tls_key go together" in half.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "{cert}"], "tls_cert and tls_key go together"),
        (["--tls-client-ca", "{ca}"], "tls_client_ca needs tls_cert"),
        (["--tls-cert", "/nonexistent.pem", "--tls-key", "{key}"], "no file at /nonexistent.pem"),
    ],
)
def test_serve_refuses_incomplete_tls_settings(certs, flags: list[str], message: str) -> None:
    paths = {"cert": certs.server_cert, "key": certs.server_key, "ca": certs.ca}
    argv = [flag.format(**{k: str(v) for k, v in paths.items()}) for flag in flags]
    result = subprocess.run(
        [sys.executable, "-m", "frontend", "serve", *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr

