"""The step contract's dataclasses (contract/step.py) to and from their protobuf messages
(proto/worker.proto), both ways, for the worker server and the scheduler's remote client.

Imports protobuf and no torch. Reading a StepInput checks everything a message can get wrong
on its own (empty ids, counts out of range, sampling settings outside their limits, a request
named twice) and raises ValueError naming the field; what depends on the worker's state is
checked by the worker (worker/step_check.py). Sampling settings travel as the public API's
SamplingParams message (contract/sampling_proto.py).
"""

from __future__ import annotations

from contract.sampling import SamplingParams
from contract.sampling_proto import sampling_from_proto, sampling_to_proto
from contract.step import (
    LoraRef,
    NewRequest,
    PromptLogprobs,
    RunningRequest,
    StepInput,
    StepOutput,
    TokenMasks,
    WorkerInfo,
)
from loompb import worker_pb2 as pb

# The metadata entry naming the session a Step or Health call belongs to.
SESSION_METADATA = "loom-session-id"
# A step names its requests' whole prompts once; the tokenizer files ride in Info.
MAX_MESSAGE_BYTES = 64 << 20
TopEntries = list[tuple[int, float]]

# ---- StepInput: the scheduler writes it, the worker reads it --------------------------------


def step_input_to_proto(step: StepInput) -> pb.StepInput:
    msg = pb.StepInput(finished_req_ids=step.finished_req_ids)
    for new in step.new:
        entry = msg.new.add(
            req_id=new.req_id,
            prompt_token_ids=new.prompt_token_ids,
            block_ids=new.block_ids,
            num_computed_tokens=new.num_computed_tokens,
            num_output_tokens=new.num_output_tokens,
            end_token_ids=new.end_token_ids,
        )
        sampling_to_proto(new.sampling, entry.sampling)
        if new.lora is not None:
            entry.lora.lora_id = new.lora.lora_id
            entry.lora.name = new.lora.name
            entry.lora.path = new.lora.path
    for running in step.running:
        msg.running.add(
            req_id=running.req_id,
            new_token_ids=running.new_token_ids,
            new_block_ids=running.new_block_ids,
        )
    msg.num_scheduled_tokens.update(step.num_scheduled_tokens)
    masks = step.token_masks
    if masks is not None:
        msg.token_masks.req_ids.extend(masks.req_ids)
        msg.token_masks.words_per_row = masks.words_per_row
        msg.token_masks.bits = masks.bits
    for req_id, proposed in step.spec_token_ids.items():
        msg.spec_token_ids[req_id].token_ids.extend(proposed)
    return msg


def step_input_from_proto(msg: pb.StepInput) -> StepInput:
    """ValueError, naming the field, for a message that is malformed on its own."""
    new = [_new_request(entry) for entry in msg.new]
    running = [
        RunningRequest(_req_id(r.req_id, "running"), list(r.new_token_ids), list(r.new_block_ids))
        for r in msg.running
    ]
    _check_unique([r.req_id for r in new] + [r.req_id for r in running], "new and running")
    for r in running:
        _check_ids(r.new_token_ids, f"running[{r.req_id}].new_token_ids")
        _check_ids(r.new_block_ids, f"running[{r.req_id}].new_block_ids")
    scheduled = dict(msg.num_scheduled_tokens)
    for req_id, num_tokens in scheduled.items():
        _req_id(req_id, "num_scheduled_tokens")
        if num_tokens < 1:
            raise ValueError(f"num_scheduled_tokens[{req_id}] must be >= 1, got {num_tokens}")
    finished = list(msg.finished_req_ids)
    spec_token_ids = {}
    for req_id, proposed in msg.spec_token_ids.items():
        token_ids = list(proposed.token_ids)
        if not token_ids:
            raise ValueError(f"spec_token_ids[{req_id}] must not be empty")
        _check_ids(token_ids, f"spec_token_ids[{req_id}]")
        spec_token_ids[_req_id(req_id, "spec_token_ids")] = token_ids
    masks = _token_masks(msg.token_masks, scheduled) if msg.HasField("token_masks") else None
    return StepInput(
        new, running, scheduled, finished, token_masks=masks, spec_token_ids=spec_token_ids
    )


def _token_masks(msg: pb.TokenMasks, scheduled: dict[str, int]) -> TokenMasks | None:
    req_ids = list(msg.req_ids)
    if not req_ids:
        return None
    _check_unique(req_ids, "token_masks")
    for req_id in req_ids:
        if req_id not in scheduled:
            raise ValueError(f"token_masks: request {req_id} is not scheduled this step")
    if msg.words_per_row < 1:
        raise ValueError(f"token_masks.words_per_row must be >= 1, got {msg.words_per_row}")
    size = len(req_ids) * msg.words_per_row * 4
    if len(msg.bits) != size:
        raise ValueError(
            f"token_masks.bits must hold {size} bytes ({len(req_ids)} rows of "
            f"{msg.words_per_row} words), got {len(msg.bits)}"
        )
    return TokenMasks(req_ids, msg.words_per_row, msg.bits)


def _new_request(msg: pb.NewRequest) -> NewRequest:
    req_id = _req_id(msg.req_id, "new")
    prompt = list(msg.prompt_token_ids)
    if not prompt:
        raise ValueError(f"new[{req_id}].prompt_token_ids must not be empty")
    _check_ids(prompt, f"new[{req_id}].prompt_token_ids")
    block_ids = list(msg.block_ids)
    _check_ids(block_ids, f"new[{req_id}].block_ids")
    for name in ("num_computed_tokens", "num_output_tokens"):
        value = getattr(msg, name)
        if not 0 <= value <= len(prompt):
            raise ValueError(f"new[{req_id}].{name} must be in [0, {len(prompt)}], got {value}")
    return NewRequest(
        req_id=req_id,
        prompt_token_ids=prompt,
        block_ids=block_ids,
        sampling=_sampling(msg, req_id),
        num_computed_tokens=msg.num_computed_tokens,
        num_output_tokens=msg.num_output_tokens,
        end_token_ids=tuple(msg.end_token_ids),
        lora=_lora(msg, req_id),
    )


def _lora(msg: pb.NewRequest, req_id: str) -> LoraRef | None:
    if not msg.HasField("lora"):
        return None
    if msg.lora.lora_id < 1 or not msg.lora.name or not msg.lora.path:
        raise ValueError(f"new[{req_id}].lora needs lora_id >= 1, a name and a path")
    return LoraRef(msg.lora.lora_id, msg.lora.name, msg.lora.path)


def _sampling(msg: pb.NewRequest, req_id: str) -> SamplingParams:
    _check_ids(msg.end_token_ids, f"new[{req_id}].end_token_ids")
    try:
        return sampling_from_proto(msg.sampling, exact=True)
    except ValueError as exc:  # its message starts with the field's name
        raise ValueError(f"new[{req_id}].sampling.{exc}") from None


def _req_id(req_id: str, where: str) -> str:
    if not req_id:
        raise ValueError(f"{where}: req_id must not be empty")
    return req_id


def _check_ids(ids: list[int], where: str) -> None:
    if ids and min(ids) < 0:
        raise ValueError(f"{where} must be >= 0, got {min(ids)}")


def _check_unique(req_ids: list[str], where: str) -> None:
    if len(set(req_ids)) != len(req_ids):
        repeated = next(r for r in req_ids if req_ids.count(r) > 1)
        raise ValueError(f"{where}: request {repeated} appears twice")


# ---- StepOutput: the worker writes it, the scheduler reads it -------------------------------


def step_output_to_proto(out: StepOutput) -> pb.StepOutput:
    msg = pb.StepOutput()
    for i, req_id in enumerate(out.req_ids):
        result = msg.results.add(
            req_id=req_id,
            sampled_token_ids=out.sampled_token_ids[i],
            logprobs=out.logprobs[i],
            error=out.errors.get(req_id, ""),
        )
        for entries in out.top_logprobs[i]:
            _top_to_proto(entries, result.top_logprobs.add())
        prompt = out.prompt_logprobs.get(req_id)
        if prompt is not None:
            result.prompt_logprobs.start_position = prompt.start_position
            result.prompt_logprobs.logprobs.extend(prompt.logprobs)
            for entries in prompt.top_logprobs or ():
                _top_to_proto(entries, result.prompt_logprobs.top_logprobs.add())
    return msg


def _top_to_proto(entries: TopEntries, msg: pb.TopLogprobs) -> None:
    msg.token_ids.extend(token_id for token_id, _ in entries)
    msg.logprobs.extend(logprob for _, logprob in entries)


def step_output_from_proto(msg: pb.StepOutput) -> StepOutput:
    out = StepOutput()
    for result in msg.results:
        out.req_ids.append(result.req_id)
        out.sampled_token_ids.append(list(result.sampled_token_ids))
        out.logprobs.append(list(result.logprobs))
        out.top_logprobs.append([_top_from_proto(t) for t in result.top_logprobs])
        if result.error:
            out.errors[result.req_id] = result.error
        if result.HasField("prompt_logprobs"):
            prompt = result.prompt_logprobs
            out.prompt_logprobs[result.req_id] = PromptLogprobs(
                start_position=prompt.start_position,
                logprobs=list(prompt.logprobs),
                top_logprobs=[_top_from_proto(t) for t in prompt.top_logprobs] or None,
            )
    return out


def _top_from_proto(msg: pb.TopLogprobs) -> TopEntries:
    return list(zip(msg.token_ids, msg.logprobs, strict=True))


# ---- WorkerInfo -----------------------------------------------------------------------------

_INFO_FIELDS = (
    "model_name", "vocab_size", "max_seq_len", "bos_id", "eos_id", "block_size",
    "num_kv_blocks", "dtype", "device", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim",
    "hidden_dim", "tensor_parallel_size", "max_loras", "max_lora_rank",
)  # fmt: skip


def worker_info_to_proto(info: WorkerInfo, tokenizer_files: dict[str, bytes]) -> pb.WorkerInfo:
    fields = {name: getattr(info, name) for name in _INFO_FIELDS}
    return pb.WorkerInfo(**fields, tokenizer_files=tokenizer_files)


def worker_info_from_proto(msg: pb.WorkerInfo) -> WorkerInfo:
    return WorkerInfo(**{name: getattr(msg, name) for name in _INFO_FIELDS})
