"""Speculative decoding's per-request counts in the usage a client reads: gRPC's Usage
(Generate and GenerateStream) and the OpenAI API's completion_tokens_details."""

from __future__ import annotations

import pytest

from client import Client
from frontend.embedded import ServerHandle
from scheduler import SamplingParams
from tests.conftest import STORIES_DIR
from tests.server.conftest import engine_is_idle, make_engine, wait_until
from tests.server.http.conftest import openai_client

PROMPT = "Once upon a time"
# The model as its own draft: every proposal is accepted. Alone on the server, a request's
# proposals are those the offline engine makes for it.
DRAFTING = {"speculative": "draft", "draft_model": str(STORIES_DIR)}


@pytest.fixture
def drafting_server(start_server) -> ServerHandle:
    return start_server(make_engine(**DRAFTING), http_port=0)


def test_grpc_usage_counts_proposed_and_accepted_tokens(drafting_server: ServerHandle) -> None:
    [want] = make_engine(**DRAFTING).generate(
        [PROMPT], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    )
    assert want.usage.spec_proposed_tokens > 0
    with Client(drafting_server.target) as client:
        got = client.generate(PROMPT, max_tokens=40, temperature=0, ignore_eos=True)
        deltas = list(client.generate_stream(PROMPT, max_tokens=40, temperature=0, ignore_eos=True))
    assert list(got.token_ids) == want.token_ids
    for usage in (got.usage, deltas[-1].usage):
        assert usage.spec_proposed_tokens == want.usage.spec_proposed_tokens
        assert usage.spec_accepted_tokens == usage.spec_proposed_tokens  # its own draft
    wait_until(lambda: engine_is_idle(drafting_server.engine), 2.0, "engine idle")


def test_openai_usage_counts_them_as_prediction_tokens(drafting_server: ServerHandle) -> None:
    completion = openai_client(drafting_server).completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=40, temperature=0
    )
    details = completion.usage.completion_tokens_details
    assert details is not None and details.accepted_prediction_tokens > 0
    assert details.rejected_prediction_tokens == 0


def test_without_speculation_the_counts_are_zero_and_absent(start_server) -> None:
    server = start_server(http_port=0)
    with Client(server.target) as client:
        got = client.generate(PROMPT, max_tokens=20, temperature=0)
    assert (got.usage.spec_proposed_tokens, got.usage.spec_accepted_tokens) == (0, 0)
    completion = openai_client(server).completions.create(
        model="stories260K", prompt=PROMPT, max_tokens=20, temperature=0
    )
    assert completion.usage.completion_tokens_details is None
