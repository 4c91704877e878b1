"""The step contract's dataclasses survive the trip through proto/worker.proto unchanged, and a
message that is malformed on its own is refused naming the field."""

from __future__ import annotations

import re

import pytest

from contract.sampling import SamplingParams
from contract.step import (
    LoraRef,
    NewRequest,
    PromptLogprobs,
    RunningRequest,
    StepInput,
    StepOutput,
    WorkerInfo,
)
from contract.step_proto import (
    step_input_from_proto,
    step_input_to_proto,
    step_output_from_proto,
    step_output_to_proto,
    worker_info_from_proto,
    worker_info_to_proto,
)
from loompb import serving_pb2, worker_pb2


def wire(message: object) -> object:
    """Serialized and parsed again, as it crosses gRPC."""
    return type(message).FromString(message.SerializeToString())


def test_step_input_round_trip_keeps_every_field() -> None:
    step = StepInput(
        new=[
            NewRequest(
                "t/a",
                [1, 403, 407],
                [7, 2],
                SamplingParams(
                    temperature=0.7,
                    top_p=0.9,
                    top_k=40,
                    seed=0,  # 0 is a seed, not "unset"
                    logprobs=True,
                    top_logprobs=5,
                    echo=True,
                    min_tokens=3,
                    stop_token_ids=[2, 13],
                    presence_penalty=0.3,
                    frequency_penalty=-0.7,
                    repetition_penalty=1.1,
                    logit_bias={5: -100.0, 13: 2.3},
                ).as_sampled(),  # the engine sends float32 values, which the wire keeps exactly
                num_computed_tokens=1,
                num_output_tokens=1,
                end_token_ids=(2, 13),
            ),
            NewRequest("t/b", [1, 5], [3], SamplingParams(temperature=0.0)),
        ],
        running=[RunningRequest("t/c", [42], [9, 10]), RunningRequest("t/d", [], [])],
        num_scheduled_tokens={"t/a": 2, "t/b": 2, "t/c": 1},
        finished_req_ids=["t/e"],
    )
    back = step_input_from_proto(wire(step_input_to_proto(step)))
    assert back == step
    assert back.new[1].sampling.seed is None


def test_step_output_round_trip_keeps_every_field() -> None:
    logprob = -0.6931471824645996  # a float32 value, as the worker computes them
    out = StepOutput(
        req_ids=["a", "b", "c"],
        sampled_token_ids=[[17], [], [3]],
        logprobs=[[logprob], [], []],
        top_logprobs=[[[(17, logprob), (4, -1.5)]], [], []],
        prompt_logprobs={
            "b": PromptLogprobs(1, [-2.25, -0.5], [[(9, -0.25)], [(8, -0.5)]]),
            "c": PromptLogprobs(4, [-1.0], None),
        },
    )
    assert step_output_from_proto(wire(step_output_to_proto(out))) == out


def test_worker_info_round_trip() -> None:
    info = WorkerInfo("m", 512, 512, 1, 2, 16, 64, "float32", "cpu", 64, 5, 8, 4, 8, 172, 2)
    files = {"tokenizer.json": b"{}", "config.json": b"\x00\x01"}
    message = wire(worker_info_to_proto(info, files))
    assert worker_info_from_proto(message) == info
    assert dict(message.tokenizer_files) == files


def new_request(**fields: object) -> worker_pb2.NewRequest:
    """A well-formed NewRequest message, with `fields` (its own or its sampling's) replaced."""
    message = worker_pb2.NewRequest(req_id="r", prompt_token_ids=[1, 2, 3], block_ids=[0])
    message.sampling.top_p = 1.0
    message.sampling.repetition_penalty = 1.0
    sampling_fields = serving_pb2.SamplingParams.DESCRIPTOR.fields_by_name
    for name, value in fields.items():
        target = message.sampling if name in sampling_fields else message
        if isinstance(value, list):
            del getattr(target, name)[:]
            getattr(target, name).extend(value)
        elif isinstance(value, dict):
            getattr(target, name).update(value)
        else:
            setattr(target, name, value)
    return message


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"req_id": ""}, "new: req_id must not be empty"),
        ({"prompt_token_ids": []}, "new[r].prompt_token_ids must not be empty"),
        ({"prompt_token_ids": [1, -2]}, "new[r].prompt_token_ids must be >= 0, got -2"),
        ({"num_computed_tokens": 4}, "new[r].num_computed_tokens must be in [0, 3], got 4"),
        ({"num_output_tokens": -1}, "new[r].num_output_tokens must be in [0, 3], got -1"),
        ({"temperature": -1.0}, "new[r].sampling.temperature must be >= 0, got -1.0"),
        ({"temperature": float("nan")}, "temperature must be a finite number, got nan"),
        ({"top_p": 0.0}, "new[r].sampling.top_p must be in (0, 1], got 0.0"),
        ({"top_k": -1}, "new[r].sampling.top_k must be >= 0, got -1"),
        ({"min_tokens": -1}, "new[r].sampling.min_tokens must be >= 0, got -1"),
        ({"top_logprobs": 21}, "top_logprobs must be in [0, 20], got 21"),
        ({"seed": -5}, "new[r].sampling.seed must be in [0, 9223372036854775807], got -5"),
        ({"block_ids": [-1]}, "new[r].block_ids must be >= 0, got -1"),
        ({"end_token_ids": [2, -1]}, "new[r].end_token_ids must be >= 0, got -1"),
        ({"presence_penalty": float("inf")}, "presence_penalty must be a finite number, got inf"),
        ({"repetition_penalty": 0.0}, "new[r].sampling.repetition_penalty must be > 0, got 0.0"),
        ({"logit_bias": {-3: 1.0}}, "new[r].sampling.logit_bias keys must be token ids >= 0"),
        ({"logit_bias": {3: float("nan")}}, "logit_bias must be a finite number, got nan"),
    ],
)
def test_malformed_new_requests_are_refused_naming_the_field(fields: dict, message: str) -> None:
    step = worker_pb2.StepInput()
    step.new.append(new_request(**fields))
    with pytest.raises(ValueError, match=re.escape(message)):
        step_input_from_proto(step)


def test_a_request_named_twice_or_scheduled_for_nothing_is_refused() -> None:
    step = worker_pb2.StepInput()
    step.new.append(new_request())
    step.running.add(req_id="r", new_token_ids=[4])
    with pytest.raises(ValueError, match="request r appears twice"):
        step_input_from_proto(step)
    step = worker_pb2.StepInput(num_scheduled_tokens={"r": 0})
    with pytest.raises(ValueError, match=r"num_scheduled_tokens\[r\] must be >= 1, got 0"):
        step_input_from_proto(step)


def test_a_requests_lora_adapter_crosses_the_wire() -> None:
    lora = LoraRef(7, "sql", "/adapters/sql")
    step = StepInput(
        new=[
            NewRequest("a", [1, 5], [0], SamplingParams().as_sampled(), lora=lora),
            NewRequest("b", [1, 6], [1], SamplingParams().as_sampled()),
        ],
        num_scheduled_tokens={"a": 2, "b": 2},
    )
    back = step_input_from_proto(wire(step_input_to_proto(step)))
    assert [new.lora for new in back.new] == [lora, None]
    message = step_input_to_proto(step)
    message.new[0].lora.lora_id = 0
    with pytest.raises(ValueError, match=r"new\[a\].lora needs lora_id >= 1"):
        step_input_from_proto(message)
