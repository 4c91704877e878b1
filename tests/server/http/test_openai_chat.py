"""/v1/chat/completions through OpenAI's client: the model's own chat template (a GGUF of
stories260K that carries one), the gRPC API's text for the same greedy request, streaming
deltas with the role first, logprobs in the chat shape, and a model with no template."""

from __future__ import annotations

import openai
import pytest

from client import Client
from tests.server.conftest import engine_is_idle, wait_until
from tests.server.http.conftest import openai_client

MESSAGES = [{"role": "user", "content": "Once upon a time"}]


def model_of(server) -> str:
    return server.engine.info.model_name


def test_chat_text_equals_the_grpc_apis(chat_server) -> None:
    client = openai_client(chat_server)
    with Client(chat_server.target, timeout=30) as grpc_client:
        expected = grpc_client.chat(MESSAGES, max_tokens=16, temperature=0)
    reply = client.chat.completions.create(
        model=model_of(chat_server), messages=MESSAGES, max_tokens=16, temperature=0
    )
    [choice] = reply.choices
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
    assert choice.finish_reason == ("length" if expected.usage.completion_tokens == 16 else "stop")


def test_streamed_chat_sends_the_role_first(chat_server) -> None:
    client = openai_client(chat_server)
    options = {"model": model_of(chat_server), "messages": MESSAGES, "temperature": 0}
    whole = client.chat.completions.create(max_tokens=16, **options).choices[0].message.content
    chunks = list(client.chat.completions.create(max_tokens=16, stream=True, **options))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].object == "chat.completion.chunk"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    wait_until(lambda: engine_is_idle(chat_server.engine), 5, "every block free")


def test_chat_logprobs_in_the_chat_shape(chat_server) -> None:
    client = openai_client(chat_server)
    reply = client.chat.completions.create(
        model=model_of(chat_server),
        messages=MESSAGES,
        max_tokens=8,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        n=2,
    )
    for choice in reply.choices:
        content = choice.logprobs.content
        assert 1 <= len(content) <= 8
        assert "".join(entry.token for entry in content) == choice.message.content
        for entry in content:
            assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
            assert len(entry.top_logprobs) == 2
            assert entry.top_logprobs[0].logprob == entry.logprob  # greedy: the likeliest
    assert reply.choices[0].message.content == reply.choices[1].message.content


def test_a_model_without_a_template_cannot_chat(http_server) -> None:
    client = openai_client(http_server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="stories260K", messages=MESSAGES)
    error = caught.value.body
    assert caught.value.status_code == 400 and error["param"] == "messages"
    assert "no chat template" in error["message"]
    wait_until(lambda: engine_is_idle(http_server.engine), 5.0, "the engine idle")
