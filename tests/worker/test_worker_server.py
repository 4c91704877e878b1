"""The worker server on loopback, around a real worker: Info, sessions (one scheduler at a
time, a reconnect starts clean) and malformed steps (refused whole, the worker serves on)."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from contract.sampling import SamplingParams
from contract.step import NewRequest, RunningRequest, StepInput
from contract.step_proto import SESSION_METADATA, step_input_to_proto
from loompb import worker_pb2, worker_pb2_grpc
from modelfiles.tokenizer_files import tokenizer_files
from tests.conftest import STORIES_DIR
from tests.server.conftest import wait_until
from worker import create_worker
from worker.config import WorkerServerConfig
from worker.server import WorkerServer

pytestmark = pytest.mark.server

NUM_BLOCKS = 64
LEASE = 0.5  # seconds: short, so the take-over test need not wait long


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[object, str]]:
    worker = create_worker(model=str(STORIES_DIR), device="cpu", num_kv_blocks=NUM_BLOCKS)
    config = WorkerServerConfig(port=0, session_timeout=LEASE)
    server = WorkerServer(worker, config, tokenizer_files(STORIES_DIR))
    port = server.start()
    yield worker, f"127.0.0.1:{port}"
    server.stop(grace=0)


@pytest.fixture
def stub(served: tuple[object, str]) -> Iterator[worker_pb2_grpc.WorkerStub]:
    with grpc.insecure_channel(served[1]) as channel:
        yield worker_pb2_grpc.WorkerStub(channel)


def connect(stub: worker_pb2_grpc.WorkerStub, scheduler_id: str = "tests") -> str:
    return stub.Connect(worker_pb2.ConnectRequest(scheduler_id=scheduler_id), timeout=10).session_id


def connect_when_free(stub: worker_pb2_grpc.WorkerStub, scheduler_id: str = "tests") -> str:
    """Connect once another test's session has gone silent for the lease."""
    sessions: list[str] = []

    def connected() -> bool:
        try:
            sessions.append(connect(stub, scheduler_id))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return False
        return True

    wait_until(connected, 10, f"{scheduler_id} connects")
    return sessions[0]


def step(stub: worker_pb2_grpc.WorkerStub, session: str, message: object) -> worker_pb2.StepOutput:
    if isinstance(message, StepInput):
        message = step_input_to_proto(message)
    return stub.Step(message, timeout=30, metadata=((SESSION_METADATA, session),))


def prefill(req_id: str, prompt: list[int], block_ids: list[int]) -> StepInput:
    new = NewRequest(req_id, prompt, block_ids, SamplingParams(temperature=0.0))
    return StepInput(new=[new], num_scheduled_tokens={req_id: len(prompt)})


def code_of(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_info_describes_the_model_and_sends_the_tokenizer(stub: worker_pb2_grpc.WorkerStub) -> None:
    info = stub.Info(worker_pb2.InfoRequest(), timeout=10)
    assert (info.model_name, info.vocab_size, info.max_seq_len) == ("stories260K", 512, 512)
    assert (info.num_kv_blocks, info.block_size, info.dtype, info.device) == (
        64,
        16,
        "float32",
        "cpu",
    )
    shape = (info.dim, info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim, info.hidden_dim)
    assert shape == (64, 5, 8, 4, 8, 172) and info.tensor_parallel_size == 1
    tokenizer = (STORIES_DIR / "tokenizer.model").read_bytes()
    assert dict(info.tokenizer_files) == {"tokenizer.model": tokenizer}


def test_one_scheduler_at_a_time_until_the_first_falls_silent(
    stub: worker_pb2_grpc.WorkerStub,
) -> None:
    first = connect_when_free(stub, "scheduler-a")
    code, details = code_of(lambda: connect(stub, "scheduler-b"))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "driven by scheduler scheduler-a" in details
    code, _ = code_of(lambda: stub.Step(worker_pb2.StepInput(), timeout=10))  # no session
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    health = stub.Health(worker_pb2.HealthRequest(), metadata=((SESSION_METADATA, first),))
    assert health.serving and health.session_live
    second = connect_when_free(stub, "scheduler-b")  # takes over once scheduler-a is silent
    code, details = code_of(lambda: step(stub, first, StepInput()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "call Connect" in details
    health = stub.Health(worker_pb2.HealthRequest(), metadata=((SESSION_METADATA, first),))
    assert health.serving and not health.session_live
    # A scheduler that disconnects frees the worker at once.
    assert not stub.Disconnect(
        worker_pb2.DisconnectRequest(), metadata=((SESSION_METADATA, first),)
    ).ended
    assert stub.Disconnect(
        worker_pb2.DisconnectRequest(), metadata=((SESSION_METADATA, second),)
    ).ended
    connect(stub, "scheduler-c")


def test_a_reconnect_drops_every_request_of_the_old_session(
    served: tuple[object, str], stub: worker_pb2_grpc.WorkerStub
) -> None:
    worker = served[0]
    session = connect_when_free(stub)
    reply = step(stub, session, prefill("a", [1, 403, 407], [5]))
    assert len(reply.results[0].sampled_token_ids) == 1
    assert set(worker.requests) == {"a"}
    again = connect(stub)  # the same scheduler, reconnecting
    assert again != session and worker.requests == {}
    decode = StepInput(running=[RunningRequest("a", [17], [])], num_scheduled_tokens={"a": 1})
    code, details = code_of(lambda: step(stub, again, decode))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "running request a is not on this worker" in details


def test_malformed_steps_are_refused_whole_and_the_worker_serves_on(
    served: tuple[object, str], stub: worker_pb2_grpc.WorkerStub
) -> None:
    worker = served[0]
    session = connect_when_free(stub)
    step(stub, session, prefill("ok", [1, 403, 407], [3]))
    before = (list(worker.requests["ok"].token_ids), worker.requests["ok"].num_computed)
    raw = grpc.insecure_channel(served[1]).unary_unary("/loom.worker.v1.Worker/Step")
    code, details = code_of(
        lambda: raw(b"\xff\xff\xff", timeout=10, metadata=((SESSION_METADATA, session),))
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "does not decode" in details
    valid_new = NewRequest("x", [1, 2], [9], SamplingParams(temperature=0.0))
    bad_steps = {
        "running request ghost is not on this worker": StepInput(
            running=[RunningRequest("ghost", [5], [])], num_scheduled_tokens={"ghost": 1}
        ),
        "token ids must be in [0, 512)": prefill("t", [1, 512], [4]),
        f"block ids must be in [0, {NUM_BLOCKS})": prefill("b", [1, 2], [NUM_BLOCKS]),
        "3 tokens scheduled, 1 are left to compute": StepInput(
            running=[RunningRequest("ok", [17], [])], num_scheduled_tokens={"ok": 3}
        ),
        "513 tokens exceed the model length 512": prefill("long", [1] * 513, list(range(33))),
        "1 blocks of 16 cannot hold 20 tokens": prefill("few", [1] * 20, [6]),
        "new request ok is already on this worker": prefill("ok", [1, 2], [7]),
        # One good request beside a bad one: neither is applied.
        "request ghost is scheduled but not on this worker": StepInput(
            new=[valid_new], num_scheduled_tokens={"x": 2, "ghost": 1}
        ),
    }
    for message, bad in bad_steps.items():
        code, details = code_of(lambda bad=bad: step(stub, session, bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in details
    top_p = step_input_to_proto(prefill("p", [1, 2], [8]))
    top_p.new[0].sampling.top_p = 0.0
    code, details = code_of(lambda: step(stub, session, top_p))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_p must be in (0, 1]" in details

    assert set(worker.requests) == {"ok"}  # nothing of the refused steps was applied
    state = worker.requests["ok"]
    assert (state.token_ids, state.num_computed) == before
    reply = step(
        stub,
        session,
        StepInput(running=[RunningRequest("ok", [17], [])], num_scheduled_tokens={"ok": 1}),
    )
    assert reply.results[0].req_id == "ok" and len(reply.results[0].sampled_token_ids) == 1
    health = stub.Health(worker_pb2.HealthRequest(), metadata=((SESSION_METADATA, session),))
    assert health.serving and health.session_live
    # A refused step still drops what it finished.
    code, _ = code_of(
        lambda: step(
            stub,
            session,
            StepInput(finished_req_ids=["ok"], running=[RunningRequest("ghost", [], [])]),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and worker.requests == {}
