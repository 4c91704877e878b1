"""Building a GenerateRequest and the call metadata from plain Python arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from loompb import serving_pb2


def build_request(
    prompt: str | Sequence[int],
    *,
    priority: int | None = None,
    request_id: str = "",
    lora: str = "",
    deadline_ms: int | None = None,
    **sampling: Any,
) -> serving_pb2.GenerateRequest:
    """A text prompt gets BOS from the server; a list of ids is used as given. `lora` names
    the LoRA adapter to run on (empty: the tenant's default, or the base model). `deadline_ms`:
    by when the server must have finished it (unset: the tenant's default, if any).

    `sampling` names fields of serving.proto's SamplingParams (`max_tokens=64,
    temperature=0, stop=["\\n"], logit_bias={50256: -100}`, ...). A field left out or given
    as None is not sent, so the server's documented default applies (max_tokens 16,
    temperature 1.0, top_p 1.0, ..., and the tenant's priority); an unknown name is a
    TypeError.
    """
    request = serving_pb2.GenerateRequest(request_id=request_id, lora=lora)
    for name, value in sampling.items():
        _set_sampling_field(request.sampling, name, value)
    if priority is not None:  # unset: the tenant's default priority
        request.priority = priority
    if deadline_ms is not None:
        request.deadline_ms = deadline_ms
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.prompt_token_ids.extend(prompt)
    return request


def _set_sampling_field(msg: serving_pb2.SamplingParams, name: str, value: Any) -> None:
    descriptor = msg.DESCRIPTOR.fields_by_name.get(name)
    if descriptor is None:
        raise TypeError(f"unknown sampling field {name!r}")
    if value is None:
        return
    if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
        getattr(msg, name).update(value)
    elif descriptor.is_repeated:
        getattr(msg, name).extend(value)
    else:
        setattr(msg, name, value)  # an optional field set, even to zero, is sent


def call_metadata(api_key: str | None, tenant: str | None) -> tuple[tuple[str, str], ...]:
    """`authorization: Bearer KEY` when the server checks API keys (the key names the tenant);
    otherwise `x-loom-tenant` picks the tenant on a server without keys."""
    metadata: list[tuple[str, str]] = []
    if api_key:
        metadata.append(("authorization", f"Bearer {api_key}"))
    if tenant:
        metadata.append(("x-loom-tenant", tenant))
    return tuple(metadata)


def build_chat_request(
    messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
) -> serving_pb2.ApplyChatTemplateRequest:
    """`messages`: [{"role": "user", "content": "Hi"}, ...]."""
    return serving_pb2.ApplyChatTemplateRequest(
        messages=[serving_pb2.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
        add_generation_prompt=add_generation_prompt,
    )
