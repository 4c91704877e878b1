"""From an OpenAI request body to what the engine takes: prompts and SamplingParams.

The engine names its fields as gRPC does; where OpenAI's names differ (a completion's
`logprobs` is the engine's `top_logprobs`), a refusal names the field the caller sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contract.sampling import MAX_TOP_LOGPROBS, SamplingParams, http_fields
from frontend.admission import Refused
from frontend.http.schemas import PROMPT_FORMS, ChatCompletionRequest, CompletionRequest
from frontend.http.schemas import SamplingFields as Fields
from modelfiles.tokenizer import NoChatTemplateError, Tokenizer

# Engine field -> the completion route's name for it.
COMPLETION_PARAMS = {"top_logprobs": "logprobs", "echo": "echo"}
CHAT_PARAMS: dict[str, str] = {}


@dataclass(slots=True)
class EngineInputs:
    prompts: list[str | list[int]]  # one engine request each
    params: SamplingParams
    param_names: dict[str, str]  # engine field -> this API's name for it


def completion_inputs(body: CompletionRequest, defaults: Mapping[str, Any]) -> EngineInputs:
    """`defaults`: the model's recommended sampling, for the fields the body leaves out."""
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_TOP_LOGPROBS:
        raise Refused(
            "INVALID_ARGUMENT",
            f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {body.logprobs}",
            param="logprobs",
        )
    wants_logprobs = body.logprobs is not None
    params = sampling_params(
        body,
        max_tokens=body.max_tokens,
        logprobs=wants_logprobs,
        top_logprobs=body.logprobs or 0,
        # Echoed prompt text needs no engine work; its logprobs do.
        echo=body.echo and wants_logprobs,
        names=COMPLETION_PARAMS,
        defaults=defaults,
    )
    return EngineInputs(prompt_list(body.prompt), params, COMPLETION_PARAMS)


def prompt_list(prompt: str | list) -> list[str | list[int]]:
    """The prompts of a completion request: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise Refused("INVALID_ARGUMENT", "prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    if all(isinstance(p, (str, list)) for p in prompt):
        return list(prompt)
    raise Refused("INVALID_ARGUMENT", PROMPT_FORMS, param="prompt")


def chat_inputs(
    body: ChatCompletionRequest, tokenizer: Tokenizer, max_model_len: int, model_name: str
) -> EngineInputs:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        _, prompt_ids = tokenizer.encode_chat(messages, body.add_generation_prompt)
    except NoChatTemplateError as exc:
        raise Refused(
            "INVALID_ARGUMENT",
            f"{exc}: {model_name} cannot chat; send a prompt to /v1/completions instead",
            param="messages",
        ) from exc
    except ValueError as exc:  # the template refused the messages
        raise Refused("INVALID_ARGUMENT", str(exc), param="messages") from exc
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise Refused("INVALID_ARGUMENT", "top_logprobs needs logprobs: true", param="top_logprobs")
    max_tokens = body.max_completion_tokens or body.max_tokens
    if max_tokens is None:  # as much as the model length leaves (at least 1: then refused)
        max_tokens = max(1, max_model_len - len(prompt_ids))
    params = sampling_params(
        body,
        max_tokens=max_tokens,
        logprobs=body.logprobs,
        top_logprobs=top,
        names=CHAT_PARAMS,
        defaults=tokenizer.sampling_defaults,
    )
    return EngineInputs([prompt_ids], params, CHAT_PARAMS)


def sampling_params(
    body: Fields,
    *,
    max_tokens: int,
    logprobs: bool,
    top_logprobs: int,
    echo: bool = False,
    names: dict[str, str],
    defaults: Mapping[str, Any],
) -> SamplingParams:
    """Raises Refused(INVALID_ARGUMENT) naming the field as the caller sent it. A field the
    body leaves out (or null) takes the model's recommended value in `defaults`, if any."""
    given = {f.name: getattr(body, f.name) for f in http_fields()} | {"top_k": body.top_k}
    chosen = {**defaults, **{name: value for name, value in given.items() if value is not None}}
    if chosen.get("top_k") == -1:  # vLLM's "off"
        chosen["top_k"] = 0
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            stop=[body.stop] if isinstance(body.stop, str) else list(body.stop or []),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            echo=echo,
            logit_bias=_token_biases(body.logit_bias),
            **chosen,
        )
    except ValueError as exc:
        refused = Refused.invalid(exc)
        refused.param = names.get(refused.param or "", refused.param)
        raise refused from exc


def _token_biases(logit_bias: dict[str, float] | None) -> dict[int, float]:
    biases = {}
    for key, bias in (logit_bias or {}).items():
        try:
            biases[int(key)] = bias
        except ValueError:
            raise Refused(
                "INVALID_ARGUMENT",
                f"logit_bias keys must be token ids, got {key[:40]!r}",
                param="logit_bias",
            ) from None
    return biases
