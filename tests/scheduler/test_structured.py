"""Structured output through the engine over stories260K (a SentencePiece vocabulary of 512):
every constraint holds at temperature 1, with n > 1, stop strings, preemption and the prefix
cache; unconstrained requests come out the same whatever constrained ones share their steps;
bad constraints are refused before anything is queued, naming what is wrong."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import numpy as np
import pytest

from common.checks import InvalidFieldError
from contract.sampling import SamplingParams
from contract.structured import StructuredOutput
from tests.scheduler.stories import stories_engine

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = [1, 403, 407, 261, 378]  # BOS "Once upon a time"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 1, "maximum": 99},
        "mood": {"enum": ["happy", "sad"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["name", "age", "mood"],
    "additionalProperties": False,
}
REGEX = r"(Tim|Lily) (was|had) [a-z]{1,6}\."
GBNF = 'root ::= "(" item ("," item)? ")"\nitem ::= [0-9] | "x"'
CHOICES = ("sun", "moon", "a big tree")
# llguidance counts properties only where every listed one is required.
SMALL_OBJECT_WITH_MIN_PROPERTIES = '{"minProperties": 3, "properties": {"a": {"type": "integer"}}}'


def constrained(structured: StructuredOutput, seed: int, **fields: object) -> SamplingParams:
    fields.setdefault("max_tokens", 96)  # the stories vocabulary spells JSON a byte at a time
    return SamplingParams(temperature=1.0, seed=seed, structured=structured, **fields)


def check(kind: str, text: str) -> None:
    if kind == "json_schema":
        jsonschema.validate(json.loads(text), SCHEMA)
    elif kind == "json_object":
        assert isinstance(json.loads(text), dict)
    elif kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "choice":
        assert text in CHOICES
    else:
        assert re.fullmatch(r"\(([0-9]|x)(,([0-9]|x))?\)", text), text


CONSTRAINTS = {
    "json_schema": StructuredOutput.json_schema(SCHEMA),
    "json_object": StructuredOutput("json_object"),
    "regex": StructuredOutput("regex", REGEX),
    "choice": StructuredOutput("choice", choices=CHOICES),
    "grammar": StructuredOutput("grammar", GBNF),
}


def test_every_kind_of_constraint_holds_at_temperature_1() -> None:
    engine = stories_engine()
    kinds = [kind for kind in CONSTRAINTS if kind != "json_object" for _ in range(6)]
    params = [constrained(CONSTRAINTS[kind], seed) for seed, kind in enumerate(kinds)]
    outs = engine.generate([PROMPT] * len(params), params)
    for kind, out in zip(kinds, outs, strict=True):
        assert out.finish_reason == "stop", (kind, out.text)
        check(kind, out.text)
    # Each constraint compiled once, whatever number of requests used it.
    assert engine.grammars.num_compiled == 4
    assert not engine.has_unfinished()


def test_unconstrained_requests_come_out_the_same_beside_constrained_ones() -> None:
    engine = stories_engine()
    free = [SamplingParams(temperature=1.0, seed=s, max_tokens=24, logprobs=True) for s in range(4)]
    alone = engine.generate([PROMPT] * 4, free)
    mixed_params: list[SamplingParams] = []
    for seed, params in enumerate(free):  # each unconstrained request beside a constrained one
        mixed_params += [params, constrained(CONSTRAINTS["regex"], seed)]
    mixed = engine.generate([PROMPT] * len(mixed_params), mixed_params)
    for expected, out in zip(alone, mixed[::2], strict=True):
        assert out.token_ids == expected.token_ids
        # Twice the rows may take the other CPU path (the fused step or torch's GEMM), which
        # sums in another order; a mask would move a logprob by far more than float32 rounding.
        assert out.logprobs == pytest.approx(expected.logprobs, abs=1e-5)
    for out in mixed[1::2]:
        check("regex", out.text)


def test_logprobs_are_over_the_tokens_the_constraint_allows() -> None:
    engine = stories_engine()
    one_way = StructuredOutput("choice", choices=("Tim was sad.",))
    params = SamplingParams(temperature=1.0, seed=3, structured=one_way, logprobs=True,
                            top_logprobs=3, max_tokens=16)  # fmt: skip
    out = engine.generate([PROMPT], params)[0]
    assert out.text == "Tim was sad."
    # Every token but EOS at the end is forced: probability 1 among what the grammar allows.
    assert all(math.isclose(lp, 0.0, abs_tol=1e-6) for lp in out.logprobs)
    assert all(len(top) == 1 for top in out.top_logprobs)


def test_each_of_n_sequences_matches_and_sequence_0_draws_as_n_1() -> None:
    engine = stories_engine()
    schema = CONSTRAINTS["json_schema"]
    many = engine.generate([PROMPT], constrained(schema, 11, n=4))[0]
    one = engine.generate([PROMPT], constrained(schema, 11))[0]
    assert len(many.sequences) == 4
    for seq in many.sequences:
        assert seq.finish_reason == "stop"
        check("json_schema", seq.text)
    assert many.sequences[0].token_ids == one.token_ids
    assert len({seq.text for seq in many.sequences}) > 1


def test_a_stop_string_cuts_a_constrained_output() -> None:
    engine = stories_engine()
    regex = StructuredOutput("regex", r"[a-z]{2,5};[a-z]{2,5}")
    outs = engine.generate([PROMPT] * 4, [constrained(regex, s, stop=[";"]) for s in range(4)])
    for out in outs:
        assert out.finish_reason == "stop"
        assert re.fullmatch(r"[a-z]{2,5}", out.text), out.text


def test_preempted_requests_resume_their_matchers_and_draw_as_run_alone() -> None:
    # 12 blocks of 16 tokens for 8 requests, the JSON ones growing past 50 tokens each:
    # preemption must happen.
    engine = stories_engine(num_kv_blocks=12)
    kinds = ["json_schema", "json_schema", "regex", "grammar"] * 2
    params = [constrained(CONSTRAINTS[k], seed) for seed, k in enumerate(kinds)]
    outs = engine.generate([PROMPT] * len(params), params)
    assert engine.stats().num_preemptions > 0
    roomy = stories_engine(num_kv_blocks=128)
    for kind, p, out in zip(kinds, params, outs, strict=True):
        check(kind, out.text)
        assert out.token_ids == roomy.generate([PROMPT], p)[0].token_ids
    assert engine.stats().num_free_blocks == engine.stats().num_blocks


def test_a_prefix_cache_hit_changes_nothing() -> None:
    engine = stories_engine()
    prompt = PROMPT + [300 + i for i in range(40)]  # two full blocks to hit
    params = constrained(CONSTRAINTS["json_schema"], 5)
    first = engine.generate([prompt], params)[0]
    again = engine.generate([prompt], params)[0]
    assert again.usage.cached_prompt_tokens >= 32
    assert again.token_ids == first.token_ids
    check("json_schema", again.text)


@pytest.mark.parametrize(
    ("structured", "words"),
    [
        (StructuredOutput("json_schema", '{"type": "objekt"}'), "objekt"),
        (StructuredOutput("json_schema", SMALL_OBJECT_WITH_MIN_PROPERTIES), "maxProperties"),
        (StructuredOutput("json_schema", '{"$ref": "#/defs/missing"}'), "/defs/missing"),
        (StructuredOutput("regex", "a(b"), "unclosed group"),
        (StructuredOutput("grammar", 'root ::= "a" | undefined_rule'), "undefined_rule"),
        (StructuredOutput("grammar", 'root ::= "a" | ('), "Expected"),
    ],
    ids=["type", "unsupported", "ref", "regex", "rule", "syntax"],
)
def test_a_constraint_that_does_not_compile_is_refused_naming_the_fault(
    structured: StructuredOutput, words: str
) -> None:
    engine = stories_engine()
    with pytest.raises(InvalidFieldError, match=re.escape(words)) as refused:
        engine.add_request(PROMPT, SamplingParams(structured=structured))
    assert refused.value.param == f"structured.{structured.kind}"
    assert not engine.has_unfinished()


def test_a_malformed_constraint_is_refused_where_it_is_made() -> None:
    with pytest.raises(InvalidFieldError, match="not valid JSON"):
        StructuredOutput("json_schema", "{")
    with pytest.raises(InvalidFieldError, match="must not be empty"):
        StructuredOutput("regex", "")
    with pytest.raises(InvalidFieldError, match="strings must be non-empty"):
        StructuredOutput("choice", choices=("a", ""))
    with pytest.raises(InvalidFieldError, match="must be one of"):
        StructuredOutput("xml", "<a/>")
    for name in ("min_tokens", "ignore_eos"):
        with pytest.raises(InvalidFieldError, match=f"{name} cannot be combined") as refused:
            SamplingParams(structured=CONSTRAINTS["regex"], **{name: 1 if "min" in name else True})
        assert refused.value.param == name


def test_constraints_over_the_limits_are_refused_naming_the_limit() -> None:
    engine = stories_engine(max_structured_bytes=100)
    big = StructuredOutput("regex", "a" * 101)
    with pytest.raises(InvalidFieldError, match=r"101 bytes.*max_structured_bytes: 100"):
        engine.add_request(PROMPT, SamplingParams(structured=big))
    symbols = stories_engine(max_grammar_symbols=20)
    with pytest.raises(InvalidFieldError, match=r"too complex.*max_grammar_symbols: 20"):
        symbols.add_request(PROMPT, SamplingParams(structured=CONSTRAINTS["json_schema"]))
    fuel = stories_engine(grammar_compile_fuel=1000)
    words = StructuredOutput("regex", "|".join(f"word{i}" for i in range(200)))
    with pytest.raises(InvalidFieldError, match=r"too complex.*grammar_compile_fuel: 1000"):
        fuel.add_request(PROMPT, SamplingParams(structured=words))
    for refusing in (engine, symbols, fuel):
        assert not refusing.has_unfinished()


def test_compiled_grammars_are_cached_up_to_the_cache_size() -> None:
    engine = stories_engine(grammar_cache_size=2)
    regexes = [StructuredOutput("regex", f"[a-z]{{{i}}}") for i in (1, 2, 3)]
    for structured in regexes[:2] * 3:
        engine.grammars.compile(structured)
    assert engine.grammars.num_compiled == 2
    engine.grammars.compile(regexes[2])  # evicts the least recently used: regexes[0]
    engine.grammars.compile(regexes[1])
    assert engine.grammars.num_compiled == 3
    engine.grammars.compile(regexes[0])
    assert engine.grammars.num_compiled == 4


def test_eos_is_allowed_only_where_the_constraint_may_end() -> None:
    engine = stories_engine()
    matcher = engine.grammars.compile(StructuredOutput("regex", "ab?")).new_matcher()
    eos = engine.eos_ids[0]

    def allowed() -> set[int]:
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
        return set(np.flatnonzero(np.unpackbits(bits, bitorder="little")).tolist())

    assert eos not in allowed()  # nothing written yet: "a" must come first
    vocabulary = engine.grammars.llg_tokenizer()
    matcher.consume_tokens(vocabulary.greedy_tokenize("a"))
    assert eos in allowed() and len(allowed()) > 1  # "a" may end, or go on with "b"
    matcher.consume_tokens(vocabulary.greedy_tokenize("b"))
    assert allowed() == {eos}  # "ab": only the end is left


def test_a_matcher_that_breaks_leaves_its_row_to_eos_and_fails_its_request_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = stories_engine()
    ok = engine.add_request(PROMPT, constrained(CONSTRAINTS["regex"], 1, max_tokens=24))
    broken = engine.add_request(PROMPT, constrained(CONSTRAINTS["regex"], 2, max_tokens=24))
    engine.step()  # both prefill and draw their first token
    matcher = engine.scheduler.requests[broken].matcher
    matcher.consume_tokens([engine.tokenizer.encode("zzz", add_bos=False)[-1]])  # not allowed
    assert matcher.is_error()
    steps = []
    execute = engine.worker.execute
    monkeypatch.setattr(engine.worker, "execute", lambda step: steps.append(step) or execute(step))
    ended = {d.req_id: d for d in engine.step() if d.finished}
    masks = steps[0].token_masks
    row = np.frombuffer(masks.row(masks.req_ids.index(broken)), dtype=np.uint8)
    assert np.flatnonzero(np.unpackbits(row, bitorder="little")).tolist() == [2]  # EOS alone
    assert ended[broken].finish_reason == "error"
    assert "structured output failed" in ended[broken].error
    ended.update({d.req_id: d for d in engine.iter_deltas() if d.finished})
    assert ended[ok].finish_reason == "stop"  # the other request went on
