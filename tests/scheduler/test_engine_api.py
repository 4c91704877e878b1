"""The engine's API on stories260K: validation, capacity, stop strings, failures, threads."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from contract.sampling import SamplingParams
from scheduler.engine import Engine
from scheduler.errors import CapacityError
from tests.conftest import REPO_ROOT
from tests.scheduler.stories import stories_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GREEDY = {"temperature": 0.0, "ignore_eos": True}

INVALID_PARAMS = [
    ({"temperature": -0.1}, "temperature must be >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"max_tokens": 0}, "max_tokens must be >= 1"),
    ({"stop": [""]}, "stop strings must be non-empty"),
    ({"stop": ["x" * 257]}, "at most 256 characters"),
    ({"stop": [str(i) for i in range(17)]}, "at most 16 strings"),
    ({"top_logprobs": 21}, r"top_logprobs must be in \[0, 20\]"),
    ({"min_tokens": 20, "max_tokens": 10}, r"min_tokens must be <= max_tokens \(10\)"),
    ({"seed": -1}, r"seed must be in \[0, "),
    ({"stop_token_ids": [-2]}, "stop_token_ids must be >= 0"),
    ({"n": 0}, "n must be >= 1, got 0"),
    ({"n": 17}, r"n must be in \[1, 16\], got 17"),
    ({"presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\], got 2.5"),
    ({"frequency_penalty": -3}, r"frequency_penalty must be in \[-2, 2\], got -3"),
    ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0, got 0.0"),
    ({"logit_bias": {5: 101.0}}, r"logit_bias must be in \[-100, 100\], got 101.0"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias keys must be token ids >= 0, got -1"),
    ({"logit_bias": {i: 1.0 for i in range(301)}}, "at most 300 entries, got 301"),
]

INVALID_PROMPTS = [
    ("", {}, "prompt must hold at least 1 token"),
    ([], {}, "prompt must hold at least 1 token"),
    ([1, 512], {}, r"prompt token ids must be in \[0, 512\), got 512"),
    ([1, -1], {}, r"prompt token ids must be in \[0, 512\), got -1"),
    ([1] * 500, {"max_tokens": 13}, r"must be <= the maximum model length \(512\), got 513"),
    ([1], {"stop_token_ids": [512]}, r"stop_token_ids must be in \[0, 512\)"),
    ([1], {"logit_bias": {512: 1.0}}, r"logit_bias keys must be in \[0, 512\), got 512"),
]


@pytest.fixture(scope="module")
def engine() -> Engine:
    return stories_engine()


def _assert_still_serving(engine: Engine) -> None:
    out = engine.generate([[1]], SamplingParams(max_tokens=5, **GREEDY))[0]
    assert out.text == "Once upon a time,"
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.num_free_blocks) == (0, 0, stats.num_blocks)


@pytest.mark.parametrize(("fields", "message"), INVALID_PARAMS)
def test_invalid_sampling_params_raise_a_clear_value_error(engine, fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        engine.add_request([1], SamplingParams(**fields))
    _assert_still_serving(engine)


@pytest.mark.parametrize(("prompt", "fields", "message"), INVALID_PROMPTS)
def test_invalid_prompts_raise_a_clear_value_error(engine, prompt, fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        engine.add_request(prompt, SamplingParams(**fields))
    _assert_still_serving(engine)


def test_duplicate_live_req_id_is_refused(engine: Engine) -> None:
    engine.add_request([1], SamplingParams(max_tokens=2), req_id="dup")
    with pytest.raises(ValueError, match="'dup' is already in use"):
        engine.add_request([1], SamplingParams(max_tokens=2), req_id="dup")
    while engine.has_unfinished():
        engine.step()
    engine.add_request([1], SamplingParams(max_tokens=2), req_id="dup")  # finished: free again
    while engine.has_unfinished():
        engine.step()


def test_capacity_errors_for_a_full_queue_and_a_request_too_big_for_the_cache() -> None:
    small = stories_engine(num_kv_blocks=8, max_queued_requests=2)
    with pytest.raises(CapacityError, match="need 9 KV blocks, the cache has 8"):
        small.add_request([1] * 100, SamplingParams(max_tokens=30))
    small.add_request([1], SamplingParams(max_tokens=2))
    small.add_request([1], SamplingParams(max_tokens=2))
    with pytest.raises(CapacityError, match=r"waiting queue is full \(2 requests\)"):
        small.add_request([1], SamplingParams(max_tokens=2))
    while small.has_unfinished():
        small.step()
    assert small.stats().num_free_blocks == 8


def test_stop_string_spanning_tokens_is_cut_and_never_streamed(engine: Engine) -> None:
    tokenizer = engine.tokenizer
    # Greedy from BOS: "Once upon a time, there was a little girl named Lily. ..."
    req_id = engine.add_request([1], SamplingParams(max_tokens=40, stop=["a little"], **GREEDY))
    deltas = []
    while engine.has_unfinished():
        deltas += engine.step()
    text = "".join(d.text for d in deltas)
    assert text == "Once upon a time, there was "
    assert deltas[-1].finish_reason == "stop" and deltas[-1].req_id == req_id
    tokens = [t for d in deltas for t in d.token_ids]
    # "a little" came as two tokens, both returned as ids though cut from the text.
    assert [tokenizer.id_to_piece(t) for t in tokens[-2:]] == ["\u2581a", "\u2581little"]


def test_stop_strings_inside_a_token_and_min_tokens(engine: Engine) -> None:
    out = engine.generate([[1]], SamplingParams(max_tokens=40, stop=["zzz", "Lily"], **GREEDY))[0]
    assert (out.text, out.finish_reason) == (
        "Once upon a time, there was a little girl named ",
        "stop",
    )
    # "Once" is the first token; min_tokens makes the engine look past it.
    out = engine.generate(
        [[1]], SamplingParams(max_tokens=4, stop=["Once"], min_tokens=2, **GREEDY)
    )[0]
    assert (out.text, out.finish_reason) == ("Once upon a time", "length")
    out = engine.generate([[1]], SamplingParams(max_tokens=4, stop=["Once"], **GREEDY))[0]
    assert (out.text, out.finish_reason, len(out.token_ids)) == ("", "stop", 1)


def test_min_tokens_holds_back_stop_token_ids_in_the_worker(engine: Engine) -> None:
    free = engine.generate([[1]], SamplingParams(max_tokens=1, top_logprobs=2, **GREEDY))[0]
    (once, _), (runner_up, runner_up_logprob) = free.top_logprobs[0]
    assert free.token_ids == [once]
    # "Once" would stop the request at once; until min_tokens it is never sampled, so greedy
    # takes the runner-up, whose logprob is still reported from the raw distribution.
    held = SamplingParams(
        max_tokens=3, stop_token_ids=[once], min_tokens=1, logprobs=True, **GREEDY
    )
    out = engine.generate([[1]], held)[0]
    assert out.token_ids[0] == runner_up
    assert out.logprobs[0] == pytest.approx(runner_up_logprob, abs=1e-6)


class _FailingWorker:
    """The real worker, failing one chosen call of execute."""

    available = True
    session_epoch = 0

    def __init__(self, worker, fail_call: int) -> None:
        self._worker = worker
        self._fail_call = fail_call
        self.num_calls = 0

    def close(self) -> None:
        self._worker.close()

    def info(self):
        return self._worker.info()

    def execute(self, step):
        self.num_calls += 1
        if self.num_calls == self._fail_call:
            raise RuntimeError("device fell over")
        return self._worker.execute(step)


def test_a_worker_failure_fails_that_steps_requests_and_the_engine_goes_on(engine: Engine) -> None:
    flaky = Engine(_FailingWorker(engine.worker, fail_call=3), engine.tokenizer, engine.config)
    running = flaky.add_request([1], SamplingParams(max_tokens=10, **GREEDY))
    flaky.step()
    flaky.step()
    late = flaky.add_request([1], SamplingParams(max_tokens=5, **GREEDY))
    deltas = flaky.step()  # the third call fails
    assert {(d.req_id, d.finish_reason) for d in deltas} == {(running, "error"), (late, "error")}
    assert "device fell over" in deltas[0].error
    assert flaky.stats().num_free_blocks == flaky.stats().num_blocks
    out = flaky.generate([[1]], SamplingParams(max_tokens=5, **GREEDY))[0]
    assert (out.text, out.finish_reason) == ("Once upon a time,", "length")


def test_a_post_processing_failure_fails_only_that_request(engine: Engine) -> None:
    victim = engine.add_request([1], SamplingParams(max_tokens=10, **GREEDY))
    other = engine.add_request([1], SamplingParams(max_tokens=10, **GREEDY))
    first = engine.step()  # both are admitted and have an output state

    def broken(*args, **kwargs):
        raise UnicodeError("detokenizer bug")

    engine._states[victim]._detokenizer.add = broken
    outputs: dict[str, list] = {victim: [], other: []}
    for delta in first:
        outputs[delta.req_id].append(delta)
    while engine.has_unfinished():
        for delta in engine.step():
            outputs[delta.req_id].append(delta)
    assert outputs[victim][-1].finish_reason == "error"
    assert "detokenizer bug" in outputs[victim][-1].error
    assert outputs[other][-1].finish_reason == "length"
    assert sum(len(d.token_ids) for d in outputs[other]) == 10
    assert outputs[other][-1].usage.completion_tokens == 10
    assert engine.stats().num_free_blocks == engine.stats().num_blocks


def test_requests_added_from_another_thread_all_complete(engine: Engine) -> None:
    added: list[str] = []
    done = threading.Event()

    def producer() -> None:
        for i in range(12):
            added.append(engine.add_request([1], SamplingParams(max_tokens=3 + i % 4, **GREEDY)))
        done.set()

    thread = threading.Thread(target=producer)
    finished: dict[str, str] = {}
    thread.start()
    while not done.is_set() or engine.has_unfinished():
        for delta in engine.step():
            if delta.finished:
                finished[delta.req_id] = delta.finish_reason
    thread.join(timeout=10)
    assert finished == {req_id: "length" for req_id in added}


def test_importing_the_scheduler_does_not_import_torch() -> None:
    code = "import sys, scheduler; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_a_request_the_scheduler_refuses_at_the_step_fails_alone(engine: Engine) -> None:
    refused = engine.add_request([1], SamplingParams(max_tokens=3, **GREEDY))
    accepted = engine.add_request([1], SamplingParams(max_tokens=3, **GREEDY))
    add_request = engine.scheduler.add_request

    def refuse_one(req):
        if req.req_id == refused:
            raise RuntimeError("scheduler bug")
        add_request(req)

    engine.scheduler.add_request = refuse_one
    try:
        finished = {}
        while engine.has_unfinished():
            for delta in engine.step():
                if delta.finished:
                    finished[delta.req_id] = (delta.finish_reason, delta.error)
    finally:
        del engine.scheduler.add_request
    assert finished[refused][0] == "error" and "scheduler bug" in finished[refused][1]
    assert finished[accepted] == ("length", None)


def test_req_id_must_be_a_string(engine: Engine) -> None:
    with pytest.raises(ValueError, match="req_id must be a string, got 7"):
        engine.add_request([1], SamplingParams(), req_id=7)


def test_iter_deltas_streams_what_generate_returns(engine: Engine) -> None:
    params = SamplingParams(max_tokens=12, logprobs=True, **GREEDY)
    expected = engine.generate([[1]], params)[0]
    req_id = engine.add_request([1], params)
    deltas = [d for d in engine.iter_deltas() if d.req_id == req_id]
    assert "".join(d.text for d in deltas) == expected.text
    assert [t for d in deltas for t in d.token_ids] == expected.token_ids
    assert [lp for d in deltas for lp in d.logprobs] == pytest.approx(expected.logprobs, abs=1e-5)
    assert [d.finish_reason for d in deltas][-1] == "length"
    assert all(d.finish_reason is None for d in deltas[:-1]) and len(deltas) == 12
