"""The per-request sampling fields, declared once.

`SamplingParams` is what a caller asks for and what the worker samples with: the engine
validates it when a request is made, the step contract carries it to the worker (contract/
step.py), worker.proto carries it as the public API's own `loom.v1.SamplingParams` message
(contract/sampling_proto.py converts both ways by looping over these fields), the OpenAI-
compatible HTTP API takes every field marked `http` under the same name, and the sampler reads
it. A new sampling field is one line here, one in serving.proto, and its use in the sampler.

Each field carries its check (`check` in the field's metadata); `__post_init__` runs them all,
so an instance is always valid, wherever it was built. No torch, no protobuf.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from common.checks import Check, InvalidFieldError, boolean, integer, number
from contract.structured import StructuredOutput, structured_output

# Request limits, checked before any work is queued (GetModelInfo reports them).
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_LENGTH = 256
MAX_SEED = 2**63 - 1
MAX_PENALTY = 2.0  # presence and frequency penalties lie in [-2, 2], as OpenAI's do
MAX_LOGIT_BIAS = 100.0  # a bias lies in [-100, 100]
MAX_LOGIT_BIAS_ENTRIES = 300


def stop_strings(name: str, value: Any) -> Any:
    strings = [value] if isinstance(value, str) else list(value)  # one string is a common slip
    if len(strings) > MAX_STOP_STRINGS:
        raise InvalidFieldError(
            name, f"{name} may hold at most {MAX_STOP_STRINGS} strings, got {len(strings)}"
        )
    for s in strings:
        if not isinstance(s, str) or not s:
            raise InvalidFieldError(name, f"{name} strings must be non-empty strings, got {s!r}")
        if len(s) > MAX_STOP_STRING_LENGTH:
            raise InvalidFieldError(
                name,
                f"{name} strings must be at most {MAX_STOP_STRING_LENGTH} characters, "
                f"got {len(s)}",
            )
    return strings


def token_ids(name: str, value: Any) -> Any:
    ids = list(value)
    for token_id in ids:
        integer(0)(name, token_id)
    return ids


def logit_biases(name: str, value: Any) -> Any:
    if not isinstance(value, dict):
        raise InvalidFieldError(name, f"{name} must map token ids to biases, got {value!r}")
    if len(value) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidFieldError(
            name, f"{name} may hold at most {MAX_LOGIT_BIAS_ENTRIES} entries, got {len(value)}"
        )
    for token_id in value:
        if isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0:
            raise InvalidFieldError(name, f"{name} keys must be token ids >= 0, got {token_id!r}")
    bias = number(-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
    return {token_id: bias(name, b) for token_id, b in value.items()}


def sampling_field(default: Any, check: Check, *, http: bool = False) -> Any:
    """A field of SamplingParams: its default and its check. `http`: the OpenAI-compatible
    API takes it in a request body under this name, with this meaning."""
    metadata = {"check": check, "http": http}
    if isinstance(default, (list, dict)):
        return field(default_factory=type(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate, with the defaults users of OpenAI's and vLLM's APIs expect.

    Logprobs are those of the model's own distribution (float32 log-softmax of the raw
    logits), not of the shaped one the token is drawn from.
    """

    max_tokens: int = sampling_field(16, integer(1))  # prompt + max_tokens <= model length
    temperature: float = sampling_field(1.0, number(0.0), http=True)  # 0 picks the likeliest
    top_p: float = sampling_field(1.0, number(0.0, 1.0, low_open=True), http=True)  # 1: all
    top_k: int = sampling_field(0, integer(0))  # 0 keeps every token
    # Keep only tokens at least min_p times as likely as the likeliest (after temperature,
    # before top-k and top-p); 0 is off, 1 keeps the likeliest alone.
    min_p: float = sampling_field(0.0, number(0.0, 1.0), http=True)
    # None: the worker's own generator; else draws depend only on (seed, position).
    seed: int | None = sampling_field(None, integer(0, MAX_SEED, optional=True), http=True)
    # Stop when the generated text contains one of these; it and what follows are dropped.
    stop: list[str] = sampling_field([], stop_strings)
    # Stop when one of these ids is generated; the id and its text are returned.
    stop_token_ids: list[int] = sampling_field([], token_ids, http=True)
    ignore_eos: bool = sampling_field(False, boolean, http=True)  # go on past EOS (benchmarks)
    # EOS, stop ids and stop strings do not end the request before this many tokens: the
    # worker never samples EOS or the stop ids until then. At most max_tokens.
    min_tokens: int = sampling_field(0, integer(0), http=True)
    logprobs: bool = sampling_field(False, boolean)  # the logprob of each generated token
    top_logprobs: int = sampling_field(0, integer(0, MAX_TOP_LOGPROBS))  # k best per position
    echo: bool = sampling_field(False, boolean)  # logprobs of the prompt too (no prefix cache)
    # Sequences generated from the prompt (the engine caps it: max_n); they share its KV
    # blocks, and with a seed sequence i draws from (seed, i, position).
    n: int = sampling_field(1, integer(1), http=True)
    # OpenAI's penalties over generated tokens: a token's logit loses frequency_penalty per
    # occurrence and presence_penalty once it occurred.
    presence_penalty: float = sampling_field(0.0, number(-MAX_PENALTY, MAX_PENALTY), http=True)
    frequency_penalty: float = sampling_field(0.0, number(-MAX_PENALTY, MAX_PENALTY), http=True)
    # CTRL's (Hugging Face's), over prompt and generated tokens: a seen token's positive logit
    # is divided by it, a negative one multiplied; 1 is off.
    repetition_penalty: float = sampling_field(1.0, number(0.0, low_open=True), http=True)
    # Token id -> bias in [-100, 100] added to its logit; at most 300 entries.
    logit_bias: dict[int, float] = sampling_field({}, logit_biases)
    # What the output must match (contract/structured.py): a JSON schema, a regex, a choice,
    # a grammar. The engine keeps it and sends the worker each step's allowed tokens instead.
    structured: StructuredOutput | None = sampling_field(None, structured_output)

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, f.metadata["check"](f.name, getattr(self, f.name)))
        if self.min_tokens > self.max_tokens:
            raise InvalidFieldError(
                "min_tokens",
                f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}",
            )
        if self.structured is not None:
            # The grammar alone decides where a constrained output may end.
            for name in ("min_tokens", "ignore_eos"):
                if getattr(self, name):
                    raise InvalidFieldError(
                        name,
                        f"{name} cannot be combined with structured output: the grammar "
                        "decides where the output ends",
                    )

    def end_ids(self, eos_ids: Iterable[int] = ()) -> frozenset[int]:
        """The ids that end the request: its stop token ids, and the model's EOS ids (several
        for Llama 3) unless ignore_eos."""
        return frozenset(self.stop_token_ids).union(() if self.ignore_eos else eos_ids)

    @property
    def shapes_logits(self) -> bool:
        """Whether a penalty or a bias changes the logits this request draws from."""
        return bool(
            self.presence_penalty
            or self.frequency_penalty
            or self.repetition_penalty != 1.0
            or self.logit_bias
        )

    def as_sampled(self) -> SamplingParams:
        """These parameters with every float rounded to float32, the precision the sampler
        computes in, and in which worker.proto carries them: an in-process worker and a
        remote one then see the very same values. The structured constraint stays with the
        engine: the worker gets each step's allowed tokens (StepInput.token_masks)."""
        floats = {f.name: _float32(getattr(self, f.name)) for f in _FLOAT_FIELDS}
        biases = {token_id: _float32(b) for token_id, b in self.logit_bias.items()}
        return replace(self, **floats, logit_bias=biases, structured=None)


_FLOAT_FIELDS = [f for f in fields(SamplingParams) if f.type == "float"]


def http_fields() -> list[Any]:
    """The fields an OpenAI-compatible request body carries under their own names."""
    return [f for f in fields(SamplingParams) if f.metadata["http"]]


FLOAT32_MAX = 3.4028234663852886e38


def _float32(value: float) -> float:
    """The float32 nearest `value`; beyond float32's range, its largest finite value."""
    value = max(-FLOAT32_MAX, min(FLOAT32_MAX, value))
    return struct.unpack("f", struct.pack("f", value))[0]
