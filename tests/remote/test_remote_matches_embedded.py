"""An engine driving `python -m worker serve` over loopback gives exactly what the engine with
the worker in-process gives: the same tokens, logprobs, top logprobs, prompt logprobs, text
and usage, greedy, seeded, with echo, with structured output, and through preemptions under a
small cache.

Both run the offline API with every request queued at once, so both schedulers see the same
steps, and the worker process computes what the in-process worker computes."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator

import pytest

from contract.structured import StructuredOutput
from frontend.remote_engine import remote_engine
from scheduler import Engine, EngineConfig, RequestOutput, SamplingParams
from tests.conftest import STORIES_DIR
from tests.remote.conftest import start_worker
from tests.server.serve_process import ServeProcess

NUM_BLOCKS = 12  # 192 tokens: four long requests at once must preempt
PROMPTS = ["Once upon a time", "The cat sat", "Lily and Ben went to the park to play with"]


@pytest.fixture(scope="module")
def worker_process() -> Iterator[ServeProcess]:
    process = start_worker("--num-kv-blocks", str(NUM_BLOCKS))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def remote(worker_process: ServeProcess) -> Iterator[Engine]:
    engine = remote_engine(EngineConfig(), worker_process.target, 30.0, 60.0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def embedded() -> Engine:
    return Engine.from_model_dir(STORIES_DIR, num_kv_blocks=NUM_BLOCKS, device="cpu")


def assert_same(remote: Engine, embedded: Engine, prompts: list, params: list) -> list:
    got = remote.generate(prompts, params)
    want = embedded.generate(prompts, params)
    for a, b in zip(got, want, strict=True):
        assert without_id(a) == without_id(b)
        assert a.finish_reason in ("stop", "length")
    return got


def without_id(output: RequestOutput) -> RequestOutput:
    return dataclasses.replace(output, req_id="")


def test_the_remote_engine_describes_the_workers_model(remote: Engine, embedded: Engine) -> None:
    assert remote.info == embedded.info
    assert remote.info.num_kv_blocks == NUM_BLOCKS and remote.max_model_len == 512
    assert remote.tokenizer.encode("Once upon a time") == embedded.tokenizer.encode(
        "Once upon a time"
    )


def test_greedy_with_logprobs(remote: Engine, embedded: Engine) -> None:
    params = SamplingParams(max_tokens=24, temperature=0, logprobs=True, top_logprobs=5)
    outputs = assert_same(remote, embedded, PROMPTS, [params] * len(PROMPTS))
    assert all(len(out.top_logprobs[0]) == 5 for out in outputs)


def test_seeded_sampling(remote: Engine, embedded: Engine) -> None:
    params = [
        SamplingParams(max_tokens=24, temperature=0.8, top_p=0.9, seed=7, logprobs=True),
        SamplingParams(max_tokens=24, temperature=1.3, top_k=40, seed=123, logprobs=True),
        SamplingParams(max_tokens=24, temperature=0.7, seed=0, min_tokens=20),
    ]
    assert_same(remote, embedded, PROMPTS, params)


def test_echo(remote: Engine, embedded: Engine) -> None:
    params = SamplingParams(max_tokens=8, temperature=0, echo=True, logprobs=True, top_logprobs=3)
    outputs = assert_same(remote, embedded, PROMPTS, [params] * len(PROMPTS))
    assert all(out.prompt_logprobs[1] is not None for out in outputs)


def test_preemption_under_a_small_cache(remote: Engine, embedded: Engine) -> None:
    before = (remote.scheduler.num_preemptions, embedded.scheduler.num_preemptions)
    prompts = [*PROMPTS, "One day"]
    params = SamplingParams(max_tokens=48, temperature=0, ignore_eos=True, logprobs=True)
    assert_same(remote, embedded, prompts, [params] * len(prompts))
    preempted = (
        remote.scheduler.num_preemptions - before[0],
        embedded.scheduler.num_preemptions - before[1],
    )
    assert preempted[0] > 0 and preempted[0] == preempted[1]
    assert remote.stats().num_free_blocks == NUM_BLOCKS  # nothing leaked


def test_penalties_and_logit_bias_reach_the_remote_worker(remote: Engine, embedded: Engine) -> None:
    greedy = {"max_tokens": 48, "temperature": 0, "ignore_eos": True}
    shaped = [
        SamplingParams(**greedy, frequency_penalty=2.0),
        SamplingParams(**greedy, presence_penalty=2.0, repetition_penalty=1.5),
        SamplingParams(max_tokens=24, temperature=0.9, seed=5, logit_bias={13: 30.0, 2: -100.0}),
    ]
    outputs = assert_same(remote, embedded, PROMPTS, shaped)
    unshaped = embedded.generate(PROMPTS[:2], [SamplingParams(**greedy)] * 2)
    # Each setting changed what was drawn, so a worker that ignored it would differ.
    for out, base in zip(outputs[:2], unshaped, strict=True):
        assert out.token_ids != base.token_ids
    assert outputs[2].token_ids.count(13) > len(outputs[2].token_ids) // 2


def test_min_p_reaches_the_remote_worker(remote: Engine, embedded: Engine) -> None:
    drawn = {"max_tokens": 32, "temperature": 1.3, "seed": 11, "ignore_eos": True}
    params = [SamplingParams(**drawn, min_p=1.0), SamplingParams(**drawn, min_p=0.2)]
    outputs = assert_same(remote, embedded, PROMPTS[:2], params)
    greedy = embedded.generate(PROMPTS[:1], SamplingParams(**{**drawn, "temperature": 0}))
    assert outputs[0].token_ids == greedy[0].token_ids
    unfiltered = embedded.generate(PROMPTS[1:2], SamplingParams(**drawn))
    assert outputs[1].token_ids != unfiltered[0].token_ids  # min_p changed the draws


def test_structured_output_masks_reach_the_remote_worker(remote: Engine, embedded: Engine) -> None:
    regex = StructuredOutput("regex", r"(Tim|Lily) (was|had) [a-z]{1,6}\.")
    schema = StructuredOutput.json_schema(
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99}},
         "required": ["n"], "additionalProperties": False}
    )  # fmt: skip
    params = [
        SamplingParams(max_tokens=24, temperature=1.0, seed=s, structured=c, logprobs=True)
        for s, c in enumerate([regex, schema, regex])
    ]
    outputs = assert_same(remote, embedded, PROMPTS, params)
    assert re.fullmatch(r"(Tim|Lily) (was|had) [a-z]{1,6}\.", outputs[0].text)
    assert set(json.loads(outputs[1].text)) == {"n"}
