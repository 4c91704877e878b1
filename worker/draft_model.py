"""Speculative decoding's draft model: a smaller Llama of the model's vocabulary, run by the
same worker, proposing greedily the tokens the model then verifies (`--speculative draft`).

Its KV cache is laid out like the model's: the same block ids and block size, the draft's own
layer shapes. The scheduler's block tables serve both caches, its rollback of the blocks that
held rejected tokens covers both, and the cache's size in blocks is budgeted for both
(worker/kv_cache.py's blocks_for_budget).

The draft runs at the start of a step, for the requests the step asks proposals of
(`StepInput.num_draft_tokens`), inside the slots the scheduler allocated for their 1 + k
tokens: first one forward over every token of each request the draft has not computed yet
(`RequestState.draft_computed`: the whole prompt at its first proposal, a prefix-cache hit
included; then the one or two tokens the last verification added), whose last row gives the
first proposal; then k - 1 one-token forwards, each feeding the proposal before. Its K/V then
cover the known tokens and k - 1 proposals; `take_verdict` (worker/speculative.py) cuts
`draft_computed` back to the tokens the model computed, so K/V written for a rejected proposal
is written again before it is read.

The output keeps the model's distribution: a greedy draft's proposal is a function of the
tokens before it, a proposer putting all its mass on one token (q(d) = 1). The worker's
verification accepts d with probability p(d) = min(1, p(d) / q(d)) and on rejection draws from
p without d, the normalised residual max(0, p - q): that is rejection sampling (Leviathan et
al., 2023) for such a q, so it holds for any deterministic proposer. And since the model's
draws are seeded by position, a seeded request draws the same tokens with any draft, or none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch

from contract.sampling import SamplingParams
from worker.attention.backend import AttentionBackend
from worker.decode_step import FusedDecode
from worker.fused_ops import install_fused_ops
from worker.kv_cache import allocate_kv_cache
from worker.loader import LoadedCheckpoint, load_checkpoint
from worker.model_args import ModelArgs
from worker.packed_modules import use_activations
from worker.packed_weights import keep_packed
from worker.placement import SingleDevice
from worker.step_batch import RequestState, build_step_batch

# What a draft row is built with: no echo, no adapter (build_step_batch reads these).
_GREEDY = SamplingParams(temperature=0.0)


def load_draft(
    path: str,
    model_args: ModelArgs,
    bos_id: int,
    eos_id: int,
    dtype: torch.dtype,
    device: torch.device,
) -> LoadedCheckpoint:
    """The draft's weights in the model's dtype (quantized ones kept packed on the CPU), checked
    against the model's vocabulary: ValueError, naming both, when they differ."""
    quantization = "auto" if keep_packed("auto", device) else "none"
    loaded = load_checkpoint(path, dtype, quantization)
    args = loaded.args
    if (args.vocab_size, loaded.bos_id, loaded.eos_id) != (model_args.vocab_size, bos_id, eos_id):
        raise ValueError(
            f"the draft model {path} has a vocabulary of {args.vocab_size} tokens (BOS "
            f"{loaded.bos_id}, EOS {loaded.eos_id}), the model {model_args.vocab_size} (BOS "
            f"{bos_id}, EOS {eos_id}): a draft must share the model's vocabulary"
        )
    # Its RoPE table reaches every position the model's requests do (a draft trained on
    # shorter sequences proposes worse there, never wrongly: the model verifies).
    args = dataclasses.replace(args, max_seq_len=max(args.max_seq_len, model_args.max_seq_len))
    return dataclasses.replace(loaded, args=args)


class DraftModel:
    """The draft's model and KV cache; `propose` runs it for one step's requests."""

    def __init__(
        self,
        path: str,
        loaded: LoadedCheckpoint,
        num_blocks: int,
        block_size: int,
        backend: AttentionBackend,
        device: torch.device,
        activations: str = "float",
    ) -> None:
        """`activations`: what its packed weights multiply, as the model's (--activations)."""
        self.name = Path(path).name
        self.args = loaded.args
        self.block_size = block_size
        self.backend = backend
        self.device = device
        kernels = backend.name == "cpu"
        self.model = SingleDevice().build_model(loaded.args, loaded.weights, device, kernels)
        if activations != "float":
            use_activations(self.model, activations)
        if backend.name == "triton":
            install_fused_ops(self.model)
        dtype = self.model.norm.weight.dtype
        self.kv_cache = allocate_kv_cache(
            loaded.args, num_blocks, block_size, dtype, device, backend
        )
        self.fused_decode = FusedDecode.create(self.model, self.kv_cache, backend.name, device)

    def propose(
        self, requests: Mapping[str, RequestState], num_tokens: Mapping[str, int]
    ) -> dict[str, list[int]]:
        """`num_tokens[req_id]` greedy proposals to follow each request's known tokens."""
        views = {
            req_id: RequestState(
                req_id,
                list(requests[req_id].token_ids),
                requests[req_id].block_ids,
                _GREEDY,
                requests[req_id].draft_computed,
                requests[req_id].num_prompt_tokens,
            )
            for req_id in num_tokens
        }
        # Catch up to the last known token, then one proposal fed back per forward.
        rows = [(view, len(view.token_ids) - view.num_computed) for view in views.values()]
        while rows:
            for (view, n), token_id in zip(rows, self._greedy_tokens(rows), strict=True):
                view.num_computed += n
                view.token_ids.append(token_id)
            rows = [
                (view, 1)
                for req_id, view in views.items()
                if len(view.token_ids) - len(requests[req_id].token_ids) < num_tokens[req_id]
            ]
        proposals = {}
        for req_id, view in views.items():
            state = requests[req_id]
            proposals[req_id] = view.token_ids[len(state.token_ids) :]
            state.draft_computed = view.num_computed  # the known tokens and k - 1 proposals
        return proposals

    def _greedy_tokens(self, rows: list[tuple[RequestState, int]]) -> list[int]:
        """One forward of the draft over `rows`: each one's most likely next token."""
        batch = build_step_batch(rows, self.block_size, self.device, self.backend)
        logits = self.fused_decode(batch) if self.fused_decode else None
        if logits is None:
            hidden = self.model(batch.input_ids, batch.positions, self.kv_cache.layers, batch.attn)
            logits = self.model.compute_logits(hidden, batch.logits_rows)
        best = logits.argmax(dim=-1).tolist()
        return [best[plan.sample_row] for plan in batch.plans]
