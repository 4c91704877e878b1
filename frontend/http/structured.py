"""Structured output over HTTP: OpenAI's `response_format` and vLLM's fields, older
(`guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`) and newer
(`structured_outputs`), each to the engine's one StructuredOutput (contract/structured.py).

A request names at most one of them. OpenAI's `strict` is accepted either way: Loom always
holds the output to the schema. Forms Loom does not do (a structural tag) are refused by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from contract.structured import StructuredOutput
from frontend.admission import Refused

GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


class _Part(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", populate_by_name=True)


class JsonSchemaFormat(_Part):
    """OpenAI's `response_format.json_schema`."""

    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | bool | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Part):
    type: str
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsField(_Part):
    """vLLM's `structured_outputs` (its StructuredOutputsParams)."""

    json_: str | dict[str, Any] | bool | None = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: Any = None


class StructuredFields(_Part):
    """The fields every generation body may carry (a base of the request models)."""

    response_format: ResponseFormat | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputsField | None = None

    def structured(self) -> tuple[StructuredOutput | None, str]:
        """The constraint the body asks for and the field it came in (for error messages);
        Refused(INVALID_ARGUMENT) naming the field for a malformed or doubled one."""
        given = [
            name
            for name in ("response_format", *GUIDED_FIELDS, "structured_outputs")
            if getattr(self, name) is not None
        ]
        if self.response_format is not None and self.response_format.type == "text":
            given.remove("response_format")
        if not given:
            return None, "response_format"
        if len(given) > 1:
            raise Refused(
                "INVALID_ARGUMENT",
                f"give one structured output constraint, got {', '.join(given)}",
                param=given[1],
            )
        name = given[0]
        try:
            return _constraint(name, getattr(self, name)), name
        except ValueError as exc:  # InvalidFieldError from StructuredOutput's own checks
            raise Refused("INVALID_ARGUMENT", f"{name}: {exc}", param=name) from exc


def _constraint(name: str, value: Any) -> StructuredOutput:
    if name == "response_format":
        return _response_format(value)
    if name == "structured_outputs":
        return _structured_outputs(value)
    if name == "guided_json":
        return StructuredOutput.json_schema(value)
    if name == "guided_choice":
        return StructuredOutput("choice", choices=tuple(value))
    kind = name.removeprefix("guided_")
    return StructuredOutput(kind, value)


def _response_format(value: ResponseFormat) -> StructuredOutput:
    if value.type == "json_object":
        return StructuredOutput("json_object")
    if value.type == "json_schema":
        if value.json_schema is None or value.json_schema.json_schema is None:
            raise ValueError("a json_schema response format needs json_schema.schema")
        return StructuredOutput.json_schema(value.json_schema.json_schema)
    raise ValueError(f"type must be text, json_object or json_schema, got {value.type!r}")


def _structured_outputs(value: StructuredOutputsField) -> StructuredOutput:
    if value.structural_tag is not None:
        raise ValueError("structural_tag is not supported")
    kinds = {
        "json": value.json_,
        "regex": value.regex,
        "choice": value.choice,
        "grammar": value.grammar,
        "json_object": value.json_object or None,
    }
    given = [kind for kind, v in kinds.items() if v is not None]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one of json, regex, choice, grammar, json_object; got {given or 'none'}"
        )
    kind = given[0]
    if kind == "json":
        return StructuredOutput.json_schema(value.json_)
    if kind == "json_object":
        return StructuredOutput("json_object")
    if kind == "choice":
        return StructuredOutput("choice", choices=tuple(kinds["choice"]))
    return StructuredOutput(kind, kinds[kind])
