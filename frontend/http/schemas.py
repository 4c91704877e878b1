"""The request bodies of the OpenAI-compatible routes, as pydantic models.

Types are strict (a string is not a number), unknown fields are ignored as OpenAI's clients
expect, and fields that would change what a request means but that Loom does not do
(`suffix`, `best_of` above n, tools, JSON output) are refused by name. The sampling fields
that mean the same here as in the engine are derived from its declaration
(contract/sampling.py), whose checks refuse bad values with the same words for both APIs.
"""

from __future__ import annotations

import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from contract.sampling import SamplingParams, http_fields
from frontend.admission import Refused
from frontend.http.body_errors import field_path, lone_surrogate

MAX_MESSAGES = 1024
PROMPT_FORMS = "prompt must be a string, a list of strings, token ids or a list of token-id lists"


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


# Every SamplingParams field the API takes under its own name (contract/sampling.py marks
# them): optional, None leaving the engine's default.
_SAMPLING_TYPES = typing.get_type_hints(SamplingParams)
_EngineSamplingFields: Any = create_model(
    "_EngineSamplingFields",
    __base__=_Body,
    **{f.name: (_SAMPLING_TYPES[f.name] | None, None) for f in http_fields()},
)


class SamplingFields(_EngineSamplingFields):
    """What both routes take: the engine's sampling fields above, and these, OpenAI's then
    vLLM's, whose form differs from the engine's or which are not sampling."""

    model: str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None  # JSON keys are strings: "50256": -100
    user: str | None = None
    top_k: int | None = None  # vLLM's: 0 or -1 is off
    priority: int | None = None  # vLLM's
    deadline_ms: int | None = None  # Loom's: milliseconds by which the request must finish

    def unsupported(self) -> str | None:
        """The first field given that Loom cannot honour, with why."""
        extra = self.model_extra or {}
        for name in ("suffix", "tools", "functions", "tool_choice", "function_call"):
            if extra.get(name) not in (None, [], ""):
                return f"{name} is not supported"
        best_of = extra.get("best_of")
        if best_of is not None and best_of != (self.n or 1):
            return "best_of is not supported (only equal to n)"
        response_format = extra.get("response_format")
        if response_format not in (None, {"type": "text"}):
            return "response_format is not supported (only text)"
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int = 16
    echo: bool = False
    logprobs: int | None = None  # top alternatives per position, with the chosen token


class TextPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise Refused(
                    "INVALID_ARGUMENT",
                    f"message content parts of type {part.type!r} are not supported (only text)",
                    param="messages",
                )
        return "".join(part.text or "" for part in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = None  # default: what the model length leaves after the prompt
    max_completion_tokens: int | None = None  # OpenAI's newer name for it
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True  # vLLM's extra


class TokenizeRequest(_Body):
    """vLLM's /tokenize."""

    prompt: str
    model: str | None = None
    add_special_tokens: bool = True  # BOS first, as a completion's text prompt gets it

    def unsupported(self) -> str | None:
        return None


def parse_body(model: type[_Body], raw: bytes) -> Any:
    """The body as `model`, or Refused(INVALID_ARGUMENT) naming the field at fault."""
    try:
        body = model.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        location = [str(part) for part in error["loc"]]
        if error["type"] == "json_invalid":
            message = lone_surrogate(raw) or f"the body is not JSON: {error['msg']}"
            raise Refused("INVALID_ARGUMENT", message) from None
        if not location:
            message = f"the body must be a JSON object: {error['msg']}"
            raise Refused("INVALID_ARGUMENT", message) from None
        param = location[0]
        if param == "prompt":
            raise Refused("INVALID_ARGUMENT", PROMPT_FORMS, param="prompt") from None
        where = field_path(error["loc"])
        raise Refused("INVALID_ARGUMENT", f"{where}: {error['msg']}", param=param) from None
    reason = body.unsupported()
    if reason is not None:
        raise Refused("INVALID_ARGUMENT", reason, param=reason.split()[0])
    return body
