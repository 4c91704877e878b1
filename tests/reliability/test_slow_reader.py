"""A client that stops reading its stream stalls nobody: the engine never waits on delivery,
other streams run to their clean tokens meanwhile, and the slow request finishes in the engine
and frees its blocks while unread. What waits for the reader is that one request's own output
(one delta per step, so at most its max_tokens), nothing that grows with time or load."""

from __future__ import annotations

import grpc

from loompb import serving_pb2, serving_pb2_grpc
from tests.reliability.conftest import (
    PROMPTS,
    assert_idle,
    clean_tokens,
    open_stream,
    tokens_of,
)
from tests.server.conftest import engine_is_idle, make_engine, wait_until


def test_a_slow_reader_stalls_no_other_stream(start_server) -> None:
    server = start_server(make_engine(device="cpu"))
    engine = server.engine
    with grpc.insecure_channel(server.target) as channel:
        stub = serving_pb2_grpc.GenerationStub(channel)
        # Top logprobs make each message large: 400 of them overflow HTTP/2's flow-control
        # window, so the server's writes for this stream block until the client reads.
        slow = open_stream(stub, PROMPTS[0], 400, logprobs=True, top_logprobs=20)
        first = next(slow)
        for _ in range(3):  # rounds of other streams while the slow one is not read
            others = [open_stream(stub, prompt, 100) for prompt in PROMPTS[1:5]]
            for call, prompt in zip(others, PROMPTS[1:5], strict=True):
                assert tokens_of(call) == clean_tokens(prompt, 100)
        # Unread, it finished in the engine: no block held, its output waits in its buffer.
        wait_until(lambda: engine_is_idle(engine), 10.0, "the slow request done in the engine")
        rest = list(slow)
    tokens = [*first.token_ids, *(t for message in rest for t in message.token_ids)]
    assert tokens == clean_tokens(PROMPTS[0], 400)
    assert rest[-1].finish_reason == serving_pb2.FINISH_REASON_LENGTH
    assert all(len(top.token_ids) == 20 for m in rest for top in m.top_logprobs)
    assert_idle(server)
