"""The step contract between scheduler and worker.

One step is one forward pass. The scheduler sends a `StepInput`, the worker answers with a
`StepOutput`. Only diffs cross: a request's prompt and block ids travel once, when it is
first scheduled (or resumed after preemption); afterwards only its new tokens and new block
ids do. This module imports no torch, so a scheduler host needs no tensor stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from contract.sampling import SamplingParams


@dataclass(slots=True, frozen=True)
class LoraRef:
    """The LoRA adapter a request runs with. The engine gives every adapter it loads a new
    `lora_id` (> 0), so an adapter loaded again under the same name, maybe from other files,
    is another adapter to the worker and to the prefix cache."""

    lora_id: int
    name: str
    path: str  # the PEFT directory, which the worker reads when it first needs the adapter


@dataclass(slots=True)
class NewRequest:
    """A request the worker has not seen yet, or one resumed after preemption."""

    req_id: str
    # Every token known so far: the prompt, plus the output generated before a preemption.
    prompt_token_ids: list[int]
    block_ids: list[int]  # logical block i -> physical block id
    sampling: SamplingParams  # as_sampled(): floats already in float32
    # Tokens whose K/V are already in the cache (a prefix-cache hit); the worker starts here.
    num_computed_tokens: int = 0
    # How many of prompt_token_ids are earlier output (a resumed request), so the worker can
    # count generated tokens for min_tokens.
    num_output_tokens: int = 0
    # With min_tokens: every id that would end the request (its stop ids, and the model's EOS
    # ids unless ignore_eos), which the worker never samples before min_tokens; else empty.
    end_token_ids: tuple[int, ...] = ()
    lora: LoraRef | None = None  # None: the base model alone


@dataclass(slots=True)
class RunningRequest:
    """A request already on the worker: only what changed since the last step."""

    req_id: str
    new_token_ids: list[int]  # tokens the worker has not seen yet (usually the last sampled one)
    new_block_ids: list[int]  # appended to the request's block table


@dataclass(slots=True)
class TokenMasks:
    """The tokens each constrained request may sample this step (structured output): row i
    is `req_ids[i]`'s, `words_per_row` little-endian 32-bit words in which bit t % 32 of word
    t // 32 is set when token t is allowed (the layout of llguidance and xgrammar). The
    engine's grammar matchers compute them for every request that samples this step."""

    req_ids: list[str]
    words_per_row: int
    bits: bytes  # len(req_ids) * words_per_row * 4 bytes

    def row(self, i: int) -> bytes:
        size = self.words_per_row * 4
        return self.bits[i * size : (i + 1) * size]


@dataclass(slots=True)
class StepInput:
    new: list[NewRequest] = field(default_factory=list)
    running: list[RunningRequest] = field(default_factory=list)
    # Tokens to compute this step per request: a prefill chunk length, or 1 for a decode.
    # Only requests named here run; a request absent from it keeps its state on the worker.
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    # Requests that finished, were aborted or preempted: the worker drops their state.
    finished_req_ids: list[str] = field(default_factory=list)
    # Per step, not per request: the allowed tokens of the constrained requests sampling now.
    token_masks: TokenMasks | None = None
    # Speculative decoding: tokens proposed to follow a decoding request's last token; it is
    # scheduled for 1 + len(proposed) tokens. The worker answers the accepted proposals and
    # one token of its own. They are not the request's tokens: the worker forgets them after
    # the step, and counts as computed only the accepted ones, when the next RunningRequest
    # brings them back in new_token_ids (1 + accepted tokens); its block table is then cut to
    # the blocks those computed tokens fill, as the scheduler cuts its own.
    spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    # Speculative decoding with the worker's draft model (WorkerInfo.draft_model): the draft
    # proposes this many tokens after a decoding request's last token, in this same step, and
    # they are verified as spec_token_ids are; the request is scheduled for 1 + n tokens (the
    # slots are allocated) and the proposals come back in StepOutput.draft_token_ids.
    num_draft_tokens: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class PromptLogprobs:
    """Logprobs of prompt tokens computed in one prefill chunk of an echo request."""

    # Position of the first prompt token these logprobs are for (>= 1: token 0 has none).
    start_position: int
    logprobs: list[float]  # logprob of prompt token start_position + i given the tokens before it
    top_logprobs: list[list[tuple[int, float]]] | None = None  # when top_logprobs > 0


@dataclass(slots=True)
class StepOutput:
    # One entry per scheduled request, in the order of `req_ids`.
    req_ids: list[str] = field(default_factory=list)
    # [] while mid-prefill; after speculation, the accepted proposals and one more token.
    sampled_token_ids: list[list[int]] = field(default_factory=list)
    # Logprob of each sampled token under the model's raw distribution (float32 log-softmax
    # of the logits, before temperature/top-k/top-p); [] when the request did not ask.
    logprobs: list[list[float]] = field(default_factory=list)
    # The k best (token_id, logprob) per sampled token; [] when the request did not ask.
    top_logprobs: list[list[list[tuple[int, float]]]] = field(default_factory=list)
    # Only for echo requests, per prefill chunk computed this step.
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)
    # Requests this step failed on their own, req_id -> why (their logits were not finite):
    # their rows hold nothing, the scheduler fails them and the others go on.
    errors: dict[str, str] = field(default_factory=dict)
    # The tokens the draft model proposed this step, per request of num_draft_tokens: what
    # sampled_token_ids verified (its accepted ones are a prefix of these).
    draft_token_ids: dict[str, list[int]] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class WorkerInfo:
    """What the scheduler needs to know about the worker once it has loaded."""

    model_name: str
    vocab_size: int
    max_seq_len: int
    bos_id: int
    eos_id: int
    block_size: int
    num_kv_blocks: int
    dtype: str
    device: str
    # The model's hyper-parameters (the whole model's, not one tensor-parallel rank's).
    dim: int = 0
    n_layers: int = 0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    hidden_dim: int = 0
    tensor_parallel_size: int = 1
    max_loras: int = 0  # LoRA adapters it holds at once (0: it serves none)
    max_lora_rank: int = 0
    draft_model: str = ""  # the draft model's name when it runs one (--speculative draft)


class Worker(Protocol):
    """The worker side of the contract: embedded in-process, a tensor-parallel group, or
    remote over gRPC."""

    # Whether steps can run now: a remote worker may be reconnecting, a tensor-parallel
    # group may have broken. An in-process worker always can.
    available: bool
    # Counts the sessions the worker has had: when it moves, whatever the engine believed
    # the worker held (requests, cached prefixes) is gone. An in-process worker stays at 0.
    session_epoch: int

    def info(self) -> WorkerInfo: ...

    def execute(self, step: StepInput) -> StepOutput: ...

    def close(self) -> None:
        """Release what the worker holds (other ranks, a remote session); idempotent."""
        ...
