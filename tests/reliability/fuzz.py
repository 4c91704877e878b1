"""Hypothesis strategies for hostile requests: every GenerateRequest field, and OpenAI JSON
bodies, drawn from boundary numbers, NaN and infinities, any unicode, huge repeated fields;
raw bytes for the wire (no message at all, or a valid one damaged); completion bodies with
many prompts."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from loompb import serving_pb2

# Fixed examples in a fixed order (derandomize): CI sees the same 200 requests every run.
FUZZ = settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT32 = st.one_of(
    st.sampled_from([-(2**31), -1, 0, 1, 2, 19, 20, 21, 255, 511, 512, 513, 2**31 - 1]),
    st.integers(-(2**31), 2**31 - 1),
)
INT64 = st.one_of(INT32, st.sampled_from([-(2**63), 2**63 - 1]))
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 2.0, -2.0, 2.5, 100.0, -100.0, 1e-45, 3.4e38]),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=64)  # no lone surrogates
MAX_TOKENS = st.one_of(st.integers(1, 8), INT32)
# Large enough to hit every limit: prompts of more tokens than the model holds, over 1 MiB.
HUGE_TEXT = st.sampled_from(["a " * 300, "Once upon a time " * 5000, "x" * (1 << 21)])
HUGE_IDS = st.sampled_from([[7] * 600, [7] * 300_000])


def _maybe(draw: Any, strategy: Any, default: Any = None) -> Any:
    return draw(strategy) if draw(st.booleans()) else default


@st.composite
def generate_requests(draw: Any) -> serving_pb2.GenerateRequest:
    request = serving_pb2.GenerateRequest(request_id=_maybe(draw, st.one_of(TEXT, HUGE_TEXT), ""))
    form = draw(st.sampled_from(["text", "ids", "both", "neither"]))
    if form in ("text", "both"):
        request.prompt = draw(st.one_of(st.just("Once upon a time"), TEXT, HUGE_TEXT))
    if form in ("ids", "both"):
        ids = st.lists(st.one_of(st.integers(0, 511), INT32), max_size=40)
        request.prompt_token_ids.extend(draw(st.one_of(ids, HUGE_IDS)))
    if draw(st.booleans()):
        request.priority = draw(INT32)
    sampling = request.sampling
    for name, strategy in (
        ("max_tokens", MAX_TOKENS),
        ("temperature", FLOATS),
        ("top_p", FLOATS),
        ("top_k", INT32),
        ("seed", INT64),
        ("min_tokens", st.one_of(st.integers(0, 4), INT32)),
        ("top_logprobs", INT32),
        ("n", st.one_of(st.integers(1, 3), INT32)),
        ("presence_penalty", FLOATS),
        ("frequency_penalty", FLOATS),
        ("repetition_penalty", FLOATS),
        ("ignore_eos", st.booleans()),
        ("logprobs", st.booleans()),
        ("echo", st.booleans()),
    ):
        if draw(st.booleans()):
            setattr(sampling, name, draw(strategy))
    sampling.stop.extend(
        _maybe(draw, st.one_of(st.lists(TEXT, max_size=20), st.just(["."] * 5000)), [])
    )
    sampling.stop_token_ids.extend(_maybe(draw, st.lists(INT32, max_size=20), []))
    bias = st.one_of(
        st.dictionaries(INT32, FLOATS, max_size=8), st.just({i: 1.0 for i in range(400)})
    )
    sampling.logit_bias.update(_maybe(draw, bias, {}))
    return request


JSON = st.recursive(
    st.none() | st.booleans() | INT64 | FLOATS | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=8,
)
PROMPTS = st.one_of(
    st.just("Once upon a time"),
    TEXT,
    st.lists(st.integers(0, 600), max_size=8),
    st.lists(TEXT, max_size=3),
    st.lists(st.lists(st.integers(0, 511), max_size=4), max_size=3),
    JSON,
)
BODY_FIELDS = {
    "model": st.one_of(st.just("stories260K"), TEXT, JSON),
    "prompt": PROMPTS,
    "messages": st.one_of(
        st.lists(st.fixed_dictionaries({"role": TEXT, "content": TEXT}), max_size=3), JSON
    ),
    "max_tokens": st.one_of(MAX_TOKENS, JSON),
    "max_completion_tokens": st.one_of(MAX_TOKENS, JSON),
    "n": st.one_of(st.integers(1, 3), INT32, JSON),
    "stream": st.one_of(st.booleans(), JSON),
    "stream_options": st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), JSON),
    "temperature": st.one_of(FLOATS, JSON),
    "top_p": st.one_of(FLOATS, JSON),
    "top_k": st.one_of(INT32, JSON),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=20), JSON),
    "seed": st.one_of(INT64, JSON),
    "presence_penalty": st.one_of(FLOATS, JSON),
    "frequency_penalty": st.one_of(FLOATS, JSON),
    "repetition_penalty": st.one_of(FLOATS, JSON),
    "logit_bias": st.one_of(st.dictionaries(st.integers(-5, 600).map(str), FLOATS), JSON),
    "logprobs": st.one_of(st.integers(0, 21), st.booleans(), JSON),
    "top_logprobs": st.one_of(INT32, JSON),
    "echo": st.one_of(st.booleans(), JSON),
    "min_tokens": st.one_of(st.integers(0, 4), INT32, JSON),
    "ignore_eos": st.one_of(st.booleans(), JSON),
    "stop_token_ids": st.one_of(st.lists(INT32, max_size=5), JSON),
    "priority": st.one_of(INT32, JSON),
    "best_of": st.one_of(st.integers(0, 3), JSON),
    "suffix": st.one_of(TEXT, JSON),
    "response_format": JSON,
}


VALID_MESSAGES = [{"role": "user", "content": "Hello"}]


@st.composite
def http_bodies(draw: Any) -> tuple[bytes, Any]:
    """(the body as sent, the JSON value it encodes, or None when it is not JSON)."""
    shape = draw(st.sampled_from(["near valid"] * 5 + ["object"] * 3 + ["any json", "not json"]))
    if draw(st.integers(0, 49)) == 0:
        shape = "huge"
    if shape == "not json":
        raw = draw(st.binary(max_size=64))
        return raw, None
    if shape == "huge":
        return json.dumps({"prompt": "x" * (1 << 17)}).encode(), {"prompt": "..."}
    if shape == "any json":
        value = draw(JSON)
    elif shape == "near valid":  # a request that runs, but for a field or two
        value = {"prompt": "Once upon a time", "max_tokens": 4, "messages": VALID_MESSAGES}
        for name in sorted(draw(st.sets(st.sampled_from(sorted(BODY_FIELDS)), max_size=2))):
            value[name] = draw(BODY_FIELDS[name])
    else:
        names = draw(st.sets(st.sampled_from(sorted(BODY_FIELDS)), max_size=8))
        value = {name: draw(BODY_FIELDS[name]) for name in sorted(names)}
        value.update(draw(st.dictionaries(TEXT, JSON, max_size=2)))
    return json.dumps(value, allow_nan=True).encode(), value


@st.composite
def wire_bytes(draw: Any) -> bytes:
    """What a raw channel may send as a request: any bytes, or a valid GenerateRequest's
    bytes cut short, with bytes flipped or inserted (which may still parse: protobuf skips
    fields it does not know)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=256))
    raw = bytearray(draw(generate_requests()).SerializeToString()[:4096])
    for _ in range(draw(st.integers(0, 4))):
        edit = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(raw)))
        if edit == "flip" and at < len(raw):
            raw[at] ^= draw(st.integers(1, 255))
        elif edit == "cut":
            del raw[at:]
        else:
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(raw)


# Around the server's --max-prompts-per-request (256 sequences) and past it, to 20,000.
NUM_PROMPTS = st.sampled_from([0, 1, 2, 16, 255, 256, 257, 1000, 5000, 20_000])


@st.composite
def many_prompt_bodies(draw: Any) -> tuple[bytes, dict]:
    """A completion body of many prompts (token ids or text), any n: (bytes, value)."""
    count = draw(NUM_PROMPTS)
    one = draw(st.sampled_from([[5], [1, 5, 6], "Hi", "Once upon a time"]))
    value = {
        "prompt": [one] * count,
        "max_tokens": draw(st.integers(1, 2)),
        "n": draw(st.sampled_from([1, 2, 16, 17])),
        "stream": draw(st.booleans()),
    }
    return json.dumps(value).encode(), value
