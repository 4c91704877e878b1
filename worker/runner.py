"""The embedded worker: keeps per-request state, runs one forward pass per step, samples."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from pathlib import Path

import torch

from common.stages import log_stage
from contract.step import (
    NewRequest,
    RunningRequest,
    StepInput,
    StepOutput,
    TokenMasks,
    WorkerInfo,
)
from modelfiles.lora_files import BaseShapes
from worker.attention import create_attention_backend
from worker.config import WorkerConfig
from worker.cuda_graphs import DecodeGraphs, capture_decode_graphs
from worker.decode_step import FusedDecode
from worker.draft_model import DraftModel, load_draft
from worker.fused_ops import install_fused_ops
from worker.kernel_warmup import warm_up_kernels
from worker.kv_cache import allocate_kv_cache, blocks_for_budget
from worker.loader import LoadedCheckpoint
from worker.lora_batch import ResidentLoras, triton_lora_path
from worker.lora_weights import LoraAdapter
from worker.packed_modules import use_activations
from worker.packed_weights import keep_packed
from worker.penalties import PenaltyTable
from worker.placement import Placement, SingleDevice
from worker.sampler import seeded_uniform
from worker.speculative import attach_proposals, detach_proposals, take_verdict
from worker.step_batch import RequestState, StepBatch, build_step_batch
from worker.step_check import check_step
from worker.step_sampling import sample_and_score

log = logging.getLogger("loom.worker")

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """`name` is one of worker.config.DTYPES (ModelConfig checked it), or None for the
    device's default."""
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


def quantization_stage(quantization: str) -> str:
    """What reading the weights does with quantized tensors, for the start-up log."""
    if quantization == "none":
        return "quantized tensors dequantized"
    if quantization == "auto":
        return "quantized tensors kept packed"
    return f"quantizing to {quantization}"


class ModelRunner:
    """Implements the `Worker` protocol of contract/step.py in-process. `placement` says what
    of the model this process holds: all of it, or one tensor-parallel rank's slice."""

    def __init__(
        self,
        config: WorkerConfig,
        placement: Placement | None = None,
        checkpoint: LoadedCheckpoint | None = None,
    ) -> None:
        """`checkpoint`: weights already in memory, in the worker's dtype and on its device
        (a benchmark's random model); by default `placement` reads `config.model.model`."""
        model, cache = config.model, config.cache
        placement = placement or SingleDevice()
        self.device = placement.device(model.device)
        if model.num_threads is not None:
            torch.set_num_threads(model.num_threads)
        self.dtype = resolve_dtype(model.dtype, self.device)
        packed = keep_packed(model.quantization, self.device)
        quantization = model.quantization if packed else "none"
        with log_stage(log, f"reading the weights ({quantization_stage(quantization)})"):
            loaded = checkpoint or placement.load(model.model, self.dtype, quantization)
        args = loaded.args
        if model.max_model_len is not None:
            args = dataclasses.replace(args, max_seq_len=model.max_model_len)
        local_args = placement.local_args(args)
        self.attention_backend = create_attention_backend(
            model.attention_backend, self.device, cache.block_size
        )
        # The CPU backend's library also holds fused norms and SiLU for the layers.
        kernels = self.attention_backend.name == "cpu"
        with log_stage(log, "building the model"):
            self.model = placement.build_model(local_args, loaded.weights, self.device, kernels)
            if model.activations != "float":
                use_activations(self.model, model.activations)
            if self.attention_backend.name == "triton":  # its norms, RoPE and SiLU too
                install_fused_ops(self.model)
        # LoRA adapters, made before the KV cache, which takes what memory is left (the Triton
        # path's slots). A tensor-parallel rank holds its slice of each (worker/lora_weights.py).
        group = getattr(self.model, "group", None)
        self.loras = ResidentLoras(
            config.lora.max_loras, config.lora.max_lora_rank, BaseShapes.of(args), self.dtype,
            self.device, self.model.fused, triton_lora_path(self.device),
            shard=(group.rank, group.world_size) if group else None,
            reduce=group.all_reduce if group else None,
        )  # fmt: skip
        self.block_size = cache.block_size
        draft = None
        if config.draft_model:  # speculative decoding's (worker/draft_model.py)
            draft = load_draft(config.draft_model, args, loaded.bos_id, loaded.eos_id,
                               self.dtype, self.device)  # fmt: skip
        num_blocks = cache.num_kv_blocks or blocks_for_budget(
            local_args, cache.block_size, self.dtype, self.device, cache.kv_cache_memory,
            draft.args if draft else None,
        )  # fmt: skip
        num_blocks = placement.agree_num_blocks(num_blocks)  # every rank has the same ids
        backend = self.attention_backend
        with log_stage(log, f"allocating the KV cache ({num_blocks} blocks)"):
            self.kv_cache = allocate_kv_cache(
                local_args, num_blocks, cache.block_size, self.dtype, self.device, backend
            )
        self.draft = draft and DraftModel(
            str(config.draft_model), draft, num_blocks, cache.block_size, backend, self.device,
            model.activations,
        )  # fmt: skip
        log.info(
            "attention backend: %s; %d torch threads",
            self.attention_backend.name,
            torch.get_num_threads(),
        )
        lora_slots = self.loras.slots
        if self.attention_backend.name == "triton" and self.device.type == "cuda":
            # No request waits for a Triton compile (the graphs below compile their own).
            warm_up_kernels(self.model, self.kv_cache, self.attention_backend, lora_slots)
        self.decode_graphs: DecodeGraphs | None = capture_decode_graphs(
            self.model, self.kv_cache, self.attention_backend, self.device,
            config.max_num_seqs, model.enforce_eager, placement.world_size, lora_slots,
        )  # fmt: skip
        # On the CPU, decode steps run as one C++ call (None where that does not apply).
        self.fused_decode = FusedDecode.create(
            self.model, self.kv_cache, self.attention_backend.name, self.device
        )
        self._info = WorkerInfo(
            # The directory's own name, even when it is a link ("." becomes the cwd's name).
            model_name=Path(os.path.abspath(model.model)).name,
            vocab_size=args.vocab_size,
            max_seq_len=args.max_seq_len,
            bos_id=loaded.bos_id,
            eos_id=loaded.eos_id,
            block_size=cache.block_size,
            num_kv_blocks=num_blocks,
            dtype=str(self.dtype).removeprefix("torch."),
            device=str(self.device),
            dim=args.dim,
            n_layers=args.n_layers,
            n_heads=args.n_heads,
            n_kv_heads=args.n_kv_heads,
            head_dim=args.head_dim,
            hidden_dim=args.hidden_dim,
            tensor_parallel_size=placement.world_size,
            max_loras=config.lora.max_loras,
            max_lora_rank=config.lora.max_lora_rank,
            draft_model=self.draft.name if self.draft else "",
        )
        self.requests: dict[str, RequestState] = {}
        self.penalties = PenaltyTable(args.vocab_size, self.device)
        self.token_masks: TokenMasks | None = None  # structured output's, of the running step
        # Draws for requests without a seed of their own.
        self._rng = random.Random(model.seed)

    def info(self) -> WorkerInfo:
        return self._info

    # A runner in this process is always there, never loses its state, never breaks alone.
    available = True
    session_epoch = 0
    failed = None
    failure = None

    def close(self) -> None:
        """Nothing to release: the weights and the cache go with the object."""

    def execute(self, step: StepInput) -> StepOutput:
        check_step(step, self.requests, self._info)  # StepRejected before anything is applied
        for req_id in step.finished_req_ids:
            self._drop(req_id)
        for new in step.new:
            self._add(new)
        for running in step.running:
            self._extend(running)
        drafted = self.draft.propose(self.requests, step.num_draft_tokens) if self.draft else {}
        attach_proposals(self.requests, step.spec_token_ids | drafted)
        scheduled = [
            (self.requests[req_id], n) for req_id, n in step.num_scheduled_tokens.items()
        ]
        scheduled, adapters, lora_errors = self._acquire_loras(scheduled)
        if not scheduled:
            return StepOutput(errors=lora_errors)
        self.token_masks = step.token_masks  # read by sample(), this step only
        with torch.inference_mode():
            # Decode-only steps replay a captured CUDA graph when there is one.
            graphs = self.decode_graphs
            replayed = graphs.run(scheduled, self.loras, bool(adapters)) if graphs else None
            if replayed is None:
                batch = self.build_batch(scheduled)
                # On the CPU a decode step without adapters is one C++ call.
                fused = self.fused_decode if not adapters else None
                logits = fused(batch) if fused else None
                if logits is None:
                    lora = None
                    if adapters:
                        lora = self.loras.step(batch.lora_runs, adapters, len(batch.input_ids))
                    hidden = self.model(
                        batch.input_ids, batch.positions, self.kv_cache.layers, batch.attn, lora
                    )
                    logits = self.model.compute_logits(hidden, batch.logits_rows)
            else:
                batch, logits = replayed
            output = self.sample(scheduled, batch, logits)
        output.errors.update(lora_errors)
        output.draft_token_ids = drafted
        for state, n in scheduled:
            if state.num_proposed:
                detach_proposals(state)
            else:
                state.num_computed += n
        return output

    def _acquire_loras(
        self, scheduled: list[tuple[RequestState, int]]
    ) -> tuple[list[tuple[RequestState, int]], dict[int, LoraAdapter], dict[str, str]]:
        """The step's adapters made resident. A request whose adapter cannot be had fails
        alone (StepOutput.errors) and is left out of the step."""
        refs = [state.lora for state, _ in scheduled if state.lora is not None]
        if not refs:
            return scheduled, {}, {}
        found = self.loras.acquire(refs)
        adapters = {i: a for i, a in found.items() if isinstance(a, LoraAdapter)}
        errors = {
            state.req_id: str(found[state.lora.lora_id])
            for state, _ in scheduled
            if state.lora is not None and state.lora.lora_id not in adapters
        }
        if errors:
            scheduled = [(st, n) for st, n in scheduled if st.req_id not in errors]
        return scheduled, adapters, errors

    def sample(
        self, scheduled: list[tuple[RequestState, int]], batch: StepBatch, logits: torch.Tensor
    ) -> StepOutput:
        """Tokens and logprobs from the step's logits (a tensor-parallel follower rank,
        which gets no logits, samples nothing)."""
        uniforms = {
            plan.sample_row + j: self._uniform(state, j)
            for (state, _), plan in zip(scheduled, batch.plans, strict=True)
            if plan.sample_row is not None
            for j in range(1 + plan.num_proposed_rows)
        }
        return sample_and_score(
            scheduled, batch.plans, logits, uniforms, self.penalties, self.token_masks
        )

    def build_batch(self, scheduled: list[tuple[RequestState, int]]) -> StepBatch:
        """The flat batch of one step, for this worker's device and attention backend."""
        return build_step_batch(scheduled, self.block_size, self.device, self.attention_backend)

    # ---- state -------------------------------------------------------------------------------

    def _add(self, new: NewRequest) -> None:
        self._drop(new.req_id)  # a request sent again (finished in the same step) starts over
        state = RequestState.from_new(new)
        if new.sampling.shapes_logits:
            state.penalty_row = self.penalties.add(
                state.token_ids, state.num_prompt_tokens, new.sampling
            )
        self.requests[new.req_id] = state

    def _drop(self, req_id: str) -> None:
        state = self.requests.pop(req_id, None)
        if state is not None and state.penalty_row is not None:
            self.penalties.release(state.penalty_row)

    def _extend(self, running: RunningRequest) -> None:
        state = self.requests[running.req_id]
        take_verdict(state, running.new_token_ids, self.block_size)
        state.token_ids.extend(running.new_token_ids)
        state.block_ids.extend(running.new_block_ids)

    # ---- sampling ----------------------------------------------------------------------

    def _uniform(self, state: RequestState, offset: int = 0) -> float:
        # The token sampled from the row `offset` after the last known token lands at
        # position len(known tokens) + offset (proposals are not known tokens).
        if state.sampling.seed is not None:
            position = len(state.token_ids) - state.num_proposed + offset
            return seeded_uniform(state.sampling.seed, position)
        return self._rng.random()
