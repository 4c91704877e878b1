"""SIGHUP reloads the tenants file of a running `serve`: a good file serves the next call and
requests in flight keep going; a bad one is logged and the previous tenants stay."""

from __future__ import annotations

import signal
import sys

import grpc

from client import Client
from loompb import serving_pb2
from serving.tenants import hash_key
from tests.conftest import STORIES_DIR
from tests.server.conftest import wait_until
from tests.server.serve_process import ServeProcess


def tenants_text(**keys: str) -> str:
    return "".join(
        f'[tenants.{tenant}]\napi_key_sha256 = ["{hash_key(key)}"]\n\n'
        for tenant, key in keys.items()
    )


def status_of(target: str, api_key: str) -> grpc.StatusCode:
    with Client(target, api_key=api_key, timeout=10) as client:
        try:
            client.generate("Hi", max_tokens=1)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_sighup_swaps_a_good_file_in_and_keeps_the_old_one_over_a_bad_one(tmp_path) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(tenants_text(acme="key-a"))
    argv = [sys.executable, "-m", "frontend", "serve", "--model", str(STORIES_DIR)]
    server = ServeProcess([*argv, "--port", "0", "--num-kv-blocks", "128", "--tenants", str(path)])
    try:
        target = server.target
        assert status_of(target, "key-a") == grpc.StatusCode.OK
        with Client(target, api_key="key-a") as acme:
            stream = acme.generate_stream("Hi", max_tokens=500, ignore_eos=True)
            next(stream)  # admitted under the old file

            path.write_text(tenants_text(acme="key-a2", bolt="key-b"))
            server.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "tenants reloaded" in server.log(), 10.0, "the reload logged")
            assert status_of(target, "key-a") == grpc.StatusCode.UNAUTHENTICATED
            assert status_of(target, "key-a2") == grpc.StatusCode.OK
            assert status_of(target, "key-b") == grpc.StatusCode.OK
            last = list(stream)[-1]  # the request admitted before the reload went on
            assert last.finish_reason == serving_pb2.FINISH_REASON_LENGTH
            assert last.usage.completion_tokens == 500

        path.write_text(tenants_text(acme="key-a3") + "weight = -1\n")
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "tenants not reloaded" in server.log(), 10.0, "the refusal logged")
        assert f"{path}:4: tenants.acme.weight: must be a number > 0" in server.log()
        assert status_of(target, "key-a2") == grpc.StatusCode.OK  # the previous file stands
        assert status_of(target, "key-a3") == grpc.StatusCode.UNAUTHENTICATED
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_sighup_without_a_tenants_file_changes_nothing() -> None:
    argv = [sys.executable, "-m", "frontend", "serve", "--model", str(STORIES_DIR)]
    server = ServeProcess([*argv, "--port", "0", "--num-kv-blocks", "64"])
    try:
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "no --tenants file" in server.log(), 10.0, "the warning logged")
        with Client(server.target) as client:
            assert client.generate("Hi", max_tokens=2, ignore_eos=True).usage.completion_tokens == 2
    finally:
        server.stop()
