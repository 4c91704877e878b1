"""Structured output: what a request's output must match, declared once.

A `StructuredOutput` is one constraint of one kind: any JSON object, a JSON schema, a regular
expression, a choice among strings, or a grammar (GBNF/EBNF as llama.cpp writes it, or Lark).
It rides in SamplingParams (`structured`), crosses the public API as serving.proto's
`StructuredOutput` message, and is built from OpenAI's and vLLM's HTTP fields by the frontend.
The engine compiles it (scheduler/grammars.py); the worker never sees it, only the allowed
tokens of each step (contract/step.py's TokenMasks).

This module checks the shape (one kind, the right fields, the JSON schema is JSON); whether
the schema, regex or grammar compiles, and whether it is within the engine's size limits, is
the engine's to say. No torch, no protobuf.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from common.checks import InvalidFieldError

KINDS = ("json_object", "json_schema", "regex", "choice", "grammar")
MAX_CHOICES = 1024


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """`kind` is one of KINDS. `spec` holds the JSON schema (as JSON text), the regex or the
    grammar; `choices` the strings of a choice. `json_object` needs neither: any JSON object."""

    kind: str
    spec: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        name = f"structured.{self.kind}"
        if self.kind not in KINDS:
            raise InvalidFieldError(
                "structured", f"structured must be one of {', '.join(KINDS)}, got {self.kind!r}"
            )
        if not isinstance(self.spec, str):
            raise InvalidFieldError(name, f"{name} must be a string, got {self.spec!r}")
        object.__setattr__(self, "choices", tuple(self.choices))
        if self.kind == "choice":
            _check_choices(name, self.choices, self.spec)
        elif self.choices:
            raise InvalidFieldError(name, f"{name} takes no choices")
        elif self.kind == "json_object":
            if self.spec:
                raise InvalidFieldError(name, f"{name} takes no schema (use json_schema)")
        elif not self.spec:
            raise InvalidFieldError(name, f"{name} must not be empty")
        elif self.kind == "json_schema":
            _check_schema_text(name, self.spec)

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str) -> StructuredOutput:
        """A JSON schema, as a dict or as JSON text."""
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return cls("json_schema", text)

    @property
    def key(self) -> tuple[str, str, tuple[str, ...]]:
        """What identifies the compiled grammar: equal keys compile to the same one."""
        return (self.kind, self.spec, self.choices)

    @property
    def size(self) -> int:
        """Bytes of the schema, regex, grammar or choices: what the engine's size limit counts."""
        return len(self.spec.encode()) + sum(len(c.encode()) for c in self.choices)


def _check_choices(name: str, choices: tuple[str, ...], spec: str) -> None:
    if spec:
        raise InvalidFieldError(name, f"{name} takes its strings in choices, not a spec")
    if not 1 <= len(choices) <= MAX_CHOICES:
        raise InvalidFieldError(
            name, f"{name} must hold 1 to {MAX_CHOICES} strings, got {len(choices)}"
        )
    for choice in choices:
        if not isinstance(choice, str) or not choice:
            raise InvalidFieldError(name, f"{name} strings must be non-empty, got {choice!r}")


def _check_schema_text(name: str, text: str) -> None:
    try:
        schema = json.loads(text)
    except ValueError as exc:
        raise InvalidFieldError(name, f"{name} is not valid JSON: {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise InvalidFieldError(
            name, f"{name} must be a JSON object (a schema), got {type(schema).__name__}"
        )


def structured_output(name: str, value: Any) -> Any:
    """SamplingParams' check of its `structured` field (the instance checked itself)."""
    if value is not None and not isinstance(value, StructuredOutput):
        raise InvalidFieldError(name, f"{name} must be a StructuredOutput, got {value!r}")
    return value
