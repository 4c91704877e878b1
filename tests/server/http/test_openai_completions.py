"""/v1/completions through OpenAI's own Python client against a live server: the gRPC API's
text for the same greedy request, streams, n, logprobs as the SDK parses them, echo, stops."""

from __future__ import annotations

import json
import urllib.request

import pytest

from client import Client
from tests.server.conftest import engine_is_idle, wait_until

PROMPT = "Once upon a time"
MODEL = "stories260K"


def test_greedy_text_equals_the_grpc_apis(http_server, client) -> None:
    with Client(http_server.target, timeout=30) as grpc_client:
        expected = grpc_client.generate(PROMPT, max_tokens=24, temperature=0)
    reply = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    [choice] = reply.choices
    assert choice.text == expected.text and choice.finish_reason == "length"
    assert reply.object == "text_completion" and reply.model == MODEL
    assert reply.id.startswith("cmpl-")
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 24, 29)
    # Streamed, the pieces make the same text; usage comes last, after every choice.
    stream = client.completions.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    assert all(c.usage is None for c in chunks[:-1])
    wait_until(lambda: engine_is_idle(http_server.engine), 5, "every block free")


def test_the_stream_is_server_sent_events_ending_with_done(http_server) -> None:
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "stream": True}
    request = urllib.request.Request(
        f"{http_server.base_url}/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-2]) and len(payloads) >= 2
    assert [p["choices"][0]["finish_reason"] for p in payloads][-1] == "length"


def test_lists_of_prompts_and_of_token_ids(client) -> None:
    options = {"model": MODEL, "max_tokens": 8, "temperature": 0}
    texts = client.completions.create(prompt=[PROMPT, "The dog"], **options)
    ids = client.completions.create(prompt=[[1, 403, 407], [1, 334]], **options)
    assert [c.index for c in texts.choices] == [0, 1] == [c.index for c in ids.choices]
    single = client.completions.create(prompt=[1, 403, 407], **options)
    assert ids.choices[0].text == single.choices[0].text
    assert texts.choices[0].text != texts.choices[1].text
    assert ids.usage.prompt_tokens == 3 + 2 and ids.usage.completion_tokens == 16


def test_n_4_with_a_seed_is_reproducible_and_distinct(http_server, client) -> None:
    options = {"model": MODEL, "prompt": PROMPT, "max_tokens": 16, "temperature": 1.5}
    first = client.completions.create(n=4, seed=21, **options)
    again = client.completions.create(n=4, seed=21, **options)
    texts = [c.text for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2, 3]
    assert len(set(texts)) == 4 and texts == [c.text for c in again.choices]
    assert first.usage.prompt_tokens == 5 and first.usage.completion_tokens <= 64
    streamed = client.completions.create(n=4, seed=21, stream=True, **options)
    pieces = ["", "", "", ""]
    for chunk in streamed:
        for choice in chunk.choices:
            pieces[choice.index] += choice.text
    assert pieces == texts
    wait_until(lambda: engine_is_idle(http_server.engine), 5, "every block free")


def test_logprobs_in_the_legacy_shape(client) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3
    )
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == 6
    assert len(logprobs.top_logprobs) == len(logprobs.text_offset) == 6
    assert "".join(logprobs.tokens) == reply.choices[0].text
    rows = zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True)
    for token, logprob, top in rows:
        assert logprob <= 0 and 3 <= len(top) <= 4 and top[token] == logprob
        assert max(top.values()) == logprob  # greedy: the chosen token is the likeliest
    assert logprobs.text_offset[0] == 0 and logprobs.text_offset == sorted(logprobs.text_offset)
    chosen_only = (
        client.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0
        )
        .choices[0]
        .logprobs
    )
    assert chosen_only.token_logprobs == logprobs.token_logprobs
    assert [list(top) for top in chosen_only.top_logprobs] == [[t] for t in logprobs.tokens]


def test_echo_with_logprobs_scores_the_prompt(client) -> None:
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=1
    )
    choice = reply.choices[0]
    plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert choice.text == PROMPT + plain.choices[0].text
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == 5 + 4  # BOS and four prompt tokens, then the output
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs[1:])
    assert logprobs.text_offset[5] == len(PROMPT)  # the output starts after the prompt


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_cut_the_text(client, stream) -> None:
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = "little"
    assert stop in text
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop], stream=stream
    )
    if stream:
        chunks = list(reply)
        got = "".join(c.choices[0].text for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        got, finish = reply.choices[0].text, reply.choices[0].finish_reason
    assert got == text[: text.index(stop)] and finish == "stop"


def test_penalties_and_vllm_extras_reach_the_engine(client) -> None:
    base = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    plain = client.completions.create(**base).choices[0]
    first_word = plain.text.split()[0]
    biased = client.completions.create(
        **base, logit_bias={"432": -100}, extra_body={"ignore_eos": True, "min_tokens": 12}
    ).choices[0]
    assert not biased.text.startswith(first_word) and biased.finish_reason == "length"
    longer = {**base, "max_tokens": 40}
    plain = client.completions.create(**longer).choices[0]
    penalised = client.completions.create(**longer, frequency_penalty=2.0, presence_penalty=2.0)
    repeated = client.completions.create(**longer, extra_body={"repetition_penalty": 1.5})
    assert penalised.choices[0].text != plain.text != repeated.choices[0].text


def test_min_p_is_taken_as_vllm_takes_it(client) -> None:
    base = {"model": MODEL, "prompt": PROMPT, "max_tokens": 30}
    greedy = client.completions.create(**base, temperature=0).choices[0].text
    drawn = {**base, "temperature": 1.5, "seed": 3}
    only_best = client.completions.create(**drawn, extra_body={"min_p": 1.0}).choices[0].text
    assert only_best == greedy
    off = client.completions.create(**drawn, extra_body={"min_p": 0}).choices[0].text
    assert off == client.completions.create(**drawn).choices[0].text != greedy
