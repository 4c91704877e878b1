"""With --tls-cert and --tls-key the HTTP API speaks HTTPS, as gRPC speaks TLS; with
--tls-client-ca it asks every client for a certificate that CA signed."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import pytest

from tests.server.conftest import make_engine
from tests.server.tls_certs import make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("https"))


def complete(url: str, context: ssl.SSLContext | None) -> dict:
    body = json.dumps({"prompt": "Once", "max_tokens": 3, "ignore_eos": True}).encode()
    request = urllib.request.Request(
        f"{url}/completions", data=body, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return json.loads(response.read())


def test_https_and_client_certificates(start_server, certs) -> None:
    tls = {"tls_cert": str(certs.server_cert), "tls_key": str(certs.server_key)}
    server = start_server(make_engine(), http_port=0, **tls)
    assert server.base_url.startswith("https://")
    trusting = ssl.create_default_context(cafile=str(certs.ca))
    assert complete(server.base_url, trusting)["usage"]["completion_tokens"] == 3
    with pytest.raises(urllib.error.URLError):  # the system's CAs do not know this one
        complete(server.base_url, ssl.create_default_context())

    mutual = start_server(make_engine(), http_port=0, tls_client_ca=str(certs.ca), **tls)
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        complete(mutual.base_url, trusting)  # no client certificate
    trusting.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    assert complete(mutual.base_url, trusting)["usage"]["completion_tokens"] == 3
