"""Adapters over the public APIs, with OpenAI's own client and Loom's gRPC client: the
`model` field (HTTP) or `lora` field (gRPC) picks one, /v1/models and GetModelInfo list them,
the tenants file says which a tenant may use and its default, admin tenants load and unload
them at run time, and every wrong call gets its status."""

from __future__ import annotations

import grpc
import openai
import pytest

from client import Client
from frontend.embedded import serve_in_thread
from loompb import serving_pb2, serving_pb2_grpc
from scheduler import Engine, SamplingParams
from serving.tenants import hash_key

pytestmark = pytest.mark.server

TENANTS = f"""\
[tenants.acme]
api_key_sha256 = ["{hash_key("key-acme")}"]
loras = ["all8"]
default_lora = "all8"

[tenants.bolt]
api_key_sha256 = ["{hash_key("key-bolt")}"]

[tenants.ops]
api_key_sha256 = ["{hash_key("key-ops")}"]
admin = true
"""
PROMPT = "Once upon a time"
BASE = "hf"  # the model directory's name: the base model's name


def _engine(adapted) -> Engine:
    specs = tuple(f"{name}={adapted.adapters[name]}" for name in ("all8", "qvdown4"))
    return Engine.from_model_dir(
        adapted.model_dir, device="cpu", lora=specs, max_lora_rank=8, num_kv_blocks=256
    )


@pytest.fixture(scope="module")
def reference(stories_adapted) -> dict[str | None, list[int]]:
    """Greedy ids of PROMPT on each adapter and the base, from the offline engine (and their
    texts under ("text", name))."""
    engine = _engine(stories_adapted)
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    names = [None, "all8", "qvdown4"]
    outputs = engine.generate([PROMPT] * 3, params, loras=names)
    found: dict = {name: out.token_ids for name, out in zip(names, outputs, strict=True)}
    assert len({tuple(ids) for ids in found.values()}) == 3  # three different answers
    found.update({("text", name): out.text for name, out in zip(names, outputs, strict=True)})
    return found


@pytest.fixture
def server(stories_adapted, tmp_path):
    path = tmp_path / "tenants.toml"
    path.write_text(TENANTS)
    handle = serve_in_thread(_engine(stories_adapted), tenants=str(path), http_port=0)
    yield handle
    handle.stop(grace=0)


def _openai(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0)


def _complete(client: openai.OpenAI, model: str) -> str:
    done = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=12, temperature=0, extra_body={"ignore_eos": True}
    )
    assert done.model == model
    return done.choices[0].text


def test_openai_model_field_picks_the_adapter(server, reference) -> None:
    bolt = _openai(server, "key-bolt")
    for model, name in ((BASE, None), ("all8", "all8"), ("qvdown4", "qvdown4")):
        assert _complete(bolt, model) == reference["text", name]
    listed = {m.id: m.model_extra.get("parent") for m in bolt.models.list()}
    assert listed == {BASE: None, "all8": BASE, "qvdown4": BASE}
    # acme may use all8 only, and runs on it when it names the base model.
    acme = _openai(server, "key-acme")
    assert _complete(acme, BASE) == reference["text", "all8"]
    assert [m.id for m in acme.models.list()] == [BASE, "all8"]
    with pytest.raises(openai.PermissionDeniedError):
        _complete(acme, "qvdown4")
    with pytest.raises(openai.NotFoundError) as caught:
        _complete(bolt, "no-such-adapter")
    assert caught.value.body["param"] == "model"


def test_grpc_lora_field_and_tenant_rules(server, reference) -> None:
    with Client(server.target, api_key="key-bolt") as bolt:
        reply = bolt.generate(PROMPT, lora="qvdown4", max_tokens=12, temperature=0, ignore_eos=True)
        assert list(reply.token_ids) == reference["qvdown4"]
        stub = serving_pb2_grpc.GenerationStub(bolt._channel)
        info = stub.GetModelInfo(serving_pb2.GetModelInfoRequest(), metadata=bolt._metadata)
        assert (list(info.lora_adapters), info.max_lora_rank) == (["all8", "qvdown4"], 8)
        with pytest.raises(grpc.RpcError) as caught:
            bolt.generate(PROMPT, lora="nope", max_tokens=2)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with Client(server.target, api_key="key-acme") as acme:
        reply = acme.generate(PROMPT, max_tokens=12, temperature=0, ignore_eos=True)
        assert list(reply.token_ids) == reference["all8"]  # its default adapter
        for name in ("qvdown4", "nope"):  # not its to use, whether it exists or not
            with pytest.raises(grpc.RpcError) as caught:
                acme.generate(PROMPT, lora=name, max_tokens=2)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_http_admin_load_and_unload(server, stories_adapted, tmp_path) -> None:
    ops, bolt = _openai(server, "key-ops"), _openai(server, "key-bolt")
    body = {"lora_name": "late", "lora_path": str(stories_adapted.adapters["all8"])}
    with pytest.raises(openai.PermissionDeniedError):
        bolt.post("/load_lora_adapter", body=body, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        _complete(bolt, "late")
    ops.post("/load_lora_adapter", body=body, cast_to=object)
    assert _complete(bolt, "late") == _complete(bolt, "all8")  # the same files
    with pytest.raises(openai.ConflictError):
        ops.post("/load_lora_adapter", body=body, cast_to=object)
    # Rank 16 over --max-lora-rank 8; a directory without an adapter.
    oversized = {"lora_name": "big", "lora_path": str(stories_adapted.adapters["gateup16"])}
    with pytest.raises(openai.BadRequestError) as caught:
        ops.post("/load_lora_adapter", body=oversized, cast_to=object)
    assert "rank 16 is over --max-lora-rank (8)" in caught.value.body["message"]
    with pytest.raises(openai.BadRequestError) as caught:
        ops.post("/load_lora_adapter", body={"lora_name": "x", "lora_path": str(tmp_path)},
                 cast_to=object)  # fmt: skip
    assert "no adapter_config.json" in caught.value.body["message"]
    ops.post("/unload_lora_adapter", body={"lora_name": "late"}, cast_to=object)
    with pytest.raises(openai.NotFoundError):
        _complete(bolt, "late")
    with pytest.raises(openai.NotFoundError):
        ops.post("/unload_lora_adapter", body={"lora_name": "late"}, cast_to=object)
    assert [m.id for m in bolt.models.list()] == [BASE, "all8", "qvdown4"]


def test_grpc_admin_load_and_unload_while_requests_stream(server, stories_adapted, reference):
    """Streams on an adapter and on the base keep going, unchanged, while another adapter
    is loaded and theirs is unloaded; new requests then see the change."""
    with Client(server.target, api_key="key-ops") as ops:
        stub = serving_pb2_grpc.GenerationStub(ops._channel)
        streams = [
            ops.generate_stream(
                PROMPT, lora=name or "", max_tokens=12, temperature=0, ignore_eos=True
            )  # fmt: skip
            for name in ("qvdown4", None, "qvdown4")
        ]
        firsts = [next(stream) for stream in streams]  # each is running
        path = str(stories_adapted.adapters["all8"])
        request = serving_pb2.LoadLoraAdapterRequest(lora_name="fresh", lora_path=path)
        stub.LoadLoraAdapter(request, metadata=ops._metadata)
        unload = serving_pb2.UnloadLoraAdapterRequest(lora_name="qvdown4")
        stub.UnloadLoraAdapter(unload, metadata=ops._metadata)
        for name, first, stream in zip(("qvdown4", None, "qvdown4"), firsts, streams, strict=True):
            ids = list(first.token_ids) + [t for d in stream for t in d.token_ids]
            assert ids == reference[name]
        reply = ops.generate(PROMPT, lora="fresh", max_tokens=12, temperature=0, ignore_eos=True)
        assert list(reply.token_ids) == reference["all8"]
        with pytest.raises(grpc.RpcError) as caught:
            ops.generate(PROMPT, lora="qvdown4", max_tokens=2)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.UnloadLoraAdapter(unload, metadata=ops._metadata)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with Client(server.target, api_key="key-bolt") as bolt:
        stub = serving_pb2_grpc.GenerationStub(bolt._channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.LoadLoraAdapter(request, metadata=bolt._metadata)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
