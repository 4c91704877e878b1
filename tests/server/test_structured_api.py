"""Structured output through both public APIs, on one server over stories260K: serving.proto's
`structured` message over gRPC; OpenAI's `response_format` and vLLM's `guided_*` and
`structured_outputs` over HTTP, streamed too. A constraint that does not compile, is over a
limit or is given twice is INVALID_ARGUMENT / 400 naming the field and the fault, and nothing
is queued."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import openai
import pytest

from client import Client
from frontend.embedded import ServerHandle, serve_in_thread
from tests.server.conftest import engine_is_idle, make_engine

REGEX = r"(Tim|Lily) (was|had) [a-z]{1,6}\."
SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "ok": {"type": "boolean"},
    },
    "required": ["n", "ok"],
    "additionalProperties": False,
}
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    engine = make_engine(max_structured_bytes=4096)
    with serve_in_thread(engine, http_port=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


def test_grpc_structured_message_of_each_kind(server: ServerHandle) -> None:
    with Client(server.target) as client:
        regex = client.generate(PROMPT, max_tokens=32, seed=1, structured={"regex": REGEX})
        assert re.fullmatch(REGEX, regex.text) and regex.finish_reason == 1
        choice = client.generate(
            PROMPT, max_tokens=8, seed=2, structured={"choice": {"choices": ["sun", "moon"]}}
        )
        assert choice.text in ("sun", "moon")
        schema = json.dumps(SCHEMA)
        pieces = list(
            client.generate_stream(
                PROMPT, max_tokens=48, seed=3, structured={"json_schema": schema}
            )
        )
        assert len(pieces) > 3
        jsonschema.validate(json.loads("".join(p.text for p in pieces)), SCHEMA)
        grammar = client.generate(
            PROMPT, max_tokens=16, seed=4, structured={"grammar": 'root ::= "(" [a-z]{1,5} ")"'}
        )
        assert re.fullmatch(r"\([a-z]{1,5}\)", grammar.text)


GRPC_REFUSALS = [
    ({"regex": "a(b"}, ["structured.regex", "unclosed group"]),
    ({"json_schema": "{"}, ["structured.json_schema", "not valid JSON"]),
    ({"json_schema": '{"type": "objekt"}'}, ["structured.json_schema", "objekt"]),
    ({"grammar": "root ::= nothing"}, ["structured.grammar", "nothing"]),
    ({"regex": "a" * 5000}, ["5000 bytes", "max_structured_bytes: 4096"]),
    ({"choice": {"choices": []}}, ["structured.choice", "1 to 1024"]),
]


@pytest.mark.parametrize(("structured", "words"), GRPC_REFUSALS, ids=lambda v: str(v)[:20])
def test_grpc_bad_constraints_are_invalid_argument(server, structured, words) -> None:
    with Client(server.target) as client:
        with pytest.raises(grpc.RpcError) as err:
            client.generate(PROMPT, structured=structured)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for word in words:
            assert word in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.generate(PROMPT, structured={"regex": "[a-z]+"}, min_tokens=2, max_tokens=4)
        assert "min_tokens cannot be combined with structured output" in err.value.details()
    assert engine_is_idle(server.engine)


HTTP_CASES: list[tuple[dict[str, Any], str]] = [
    ({"guided_regex": REGEX}, "regex"),
    ({"guided_choice": ["sun", "moon", "a tree"]}, "choice"),
    ({"guided_json": SCHEMA}, "schema"),
    ({"guided_json": json.dumps(SCHEMA)}, "schema"),
    ({"guided_grammar": 'root ::= "(" [a-z]{1,5} ")"'}, "grammar"),
    ({"structured_outputs": {"regex": REGEX}}, "regex"),
    ({"structured_outputs": {"json": SCHEMA}}, "schema"),
    ({"structured_outputs": {"choice": ["sun", "moon", "a tree"]}}, "choice"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}},
     "schema"),
]  # fmt: skip


def holds(kind: str, text: str) -> bool:
    if kind == "regex":
        return re.fullmatch(REGEX, text) is not None
    if kind == "choice":
        return text in ("sun", "moon", "a tree")
    if kind == "grammar":
        return re.fullmatch(r"\([a-z]{1,5}\)", text) is not None
    jsonschema.validate(json.loads(text), SCHEMA)
    return True


@pytest.mark.parametrize(("fields", "kind"), HTTP_CASES, ids=lambda v: str(v)[:24])
def test_http_fields_of_openai_and_vllm(http: openai.OpenAI, fields, kind) -> None:
    reply = http.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=48, n=2, seed=5, extra_body=fields
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.text
        assert holds(kind, choice.text), choice.text
    streamed = http.completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=48, seed=6, stream=True, extra_body=fields
    )
    assert holds(kind, "".join(chunk.choices[0].text for chunk in streamed if chunk.choices))


HTTP_REFUSALS = [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
      "schema": {"type": "objekt"}}}}, "response_format", "objekt"),
    ({"response_format": {"type": "xml"}}, "response_format", "json_object or json_schema"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "json_schema.schema"),
    ({"guided_regex": "a(b"}, "guided_regex", "unclosed group"),
    ({"guided_regex": "a+", "guided_choice": ["a"]}, "guided_choice", "give one"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs", "exactly one"),
    ({"structured_outputs": {"structural_tag": {}}}, "structured_outputs", "structural_tag"),
    ({"guided_grammar": "a" * 5000}, "guided_grammar", "max_structured_bytes: 4096"),
    ({"guided_regex": "a+", "min_tokens": 2}, "min_tokens", "cannot be combined"),
]  # fmt: skip


@pytest.mark.parametrize(("fields", "param", "words"), HTTP_REFUSALS, ids=lambda v: str(v)[:24])
def test_http_bad_constraints_are_400_naming_the_field(server, http, fields, param, words):
    with pytest.raises(openai.BadRequestError) as err:
        http.completions.create(model="stories260K", prompt=PROMPT, extra_body=fields)
    error = err.value.body
    assert error["param"] == param, error
    assert words in error["message"], error
    assert engine_is_idle(server.engine)


def test_a_constraint_compiles_off_the_engine_loop_and_the_event_loop(server, http) -> None:
    grammars = server.engine.grammars
    threads: list[str] = []
    compile_once = grammars._compile

    def recording(structured, name):  # the uncached compile only
        threads.append(threading.current_thread().name)
        return compile_once(structured, name)

    grammars._compile = recording
    try:
        http.completions.create(
            model="stories260K",
            prompt=PROMPT,
            max_tokens=4,
            extra_body={"guided_regex": "[0-9]{4}"},
        )
        with Client(server.target) as client:
            client.generate(PROMPT, max_tokens=4, structured={"regex": "[0-9]{5}"})
    finally:
        grammars._compile = compile_once
    assert len(threads) == 2
    # Neither the engine loop nor the server's event loop (grpc-frontend) waited on it.
    assert not {"engine-loop", "grpc-frontend"} & set(threads), threads
