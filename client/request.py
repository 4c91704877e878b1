"""Building a GenerateRequest and the call metadata from plain Python arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from loompb import serving_pb2


def build_request(
    prompt: str | Sequence[int],
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    min_tokens: int = 0,
    logprobs: bool = False,
    top_logprobs: int = 0,
    echo: bool = False,
    n: int | None = None,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
    repetition_penalty: float | None = None,
    logit_bias: Mapping[int, float] | None = None,
    priority: int | None = None,
    request_id: str = "",
) -> serving_pb2.GenerateRequest:
    """A text prompt gets BOS from the server; a list of ids is used as given.

    Arguments left as None are not sent, so the server's documented default applies
    (max_tokens 16, temperature 1.0, top_p 1.0, top_k 0, unseeded, n 1, repetition_penalty 1;
    the tenant's priority).
    """
    sampling = serving_pb2.SamplingParams(
        stop=list(stop),
        stop_token_ids=list(stop_token_ids),
        ignore_eos=ignore_eos,
        min_tokens=min_tokens,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        echo=echo,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        logit_bias=dict(logit_bias or {}),
    )
    # Setting an optional field, even to its zero value, marks it present.
    optional = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "n": n,
        "repetition_penalty": repetition_penalty,
    }
    for name, value in optional.items():
        if value is not None:
            setattr(sampling, name, value)
    request = serving_pb2.GenerateRequest(request_id=request_id, sampling=sampling)
    if priority is not None:  # unset: the tenant's default priority
        request.priority = priority
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.prompt_token_ids.extend(prompt)
    return request


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
