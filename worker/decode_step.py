"""A decode step of the whole model in one C++ call on the CPU (worker/csrc/decode_step_cpu.cpp).

Steps of a few rows need no prefill attention: decodes, and sequences of several tokens (a
speculative verification's 1 + k, a short prefill chunk) as one decode row per token over the
context up to it. So the embedding, every layer and the LM head run as one OpenMP team with a
few barriers per layer instead of some 150 parallel regions and 300 Python-dispatched
operators per token.
The C++ model holds the Python model's weights (shared, not copied) and the KV cache is the
CPU attention backend's. Other steps, other devices and dtypes, and tensor-parallel models
take the per-operator path (worker/model.py), which is also the reference in tests.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.kv_cache import KVCache
from worker.model import Embedding, Linear, Transformer
from worker.packed_modules import ACTIVATION_CODES, PackedEmbedding, PackedLinear
from worker.packed_weights import KERNEL_TYPE_IDS, PackedTensor
from worker.step_batch import StepBatch

# The C++ model's type code for a float32 matrix (packed types use KERNEL_TYPE_IDS).
FLOAT32 = -1
BF16 = KERNEL_TYPE_IDS["BF16"]  # bfloat16 weights: float activations, as float32 ones
# Most rows a fused step takes: its products are row loops, which torch's GEMM beats on
# wider steps (the packed float kernel's own crossover).
MAX_FUSED_ROWS = 16
# ... when every projection is a column-major float32 matrix (worker/weight_layout.py): the
# step's sums by input match the per-operator GEMMs up to about 32 rows on the 60M model
# (23 ms against 32 at 16 rows, 41-43 ms against 42-55 at 32, slower from 48).
MAX_FUSED_FLOAT32_ROWS = 32
# ... unless every projection is packed and takes integer activations: the per-operator path
# runs the same integer products up to 512 rows, so the fused step only saves its overhead
# (32 SmolLM2 sequences decoding: 1.5x the tokens per second of the per-operator path).
MAX_FUSED_INTEGER_ROWS = 64


def _parts(module: Any) -> tuple[list[torch.Tensor], list[int]] | None:
    """A projection's or embedding's weights as the C++ model takes them, or None."""
    if isinstance(module, (PackedLinear, PackedEmbedding)):
        parts = module.parts if isinstance(module, PackedLinear) else [module.packed]
        if not all(isinstance(p, PackedTensor) for p in parts):
            return None  # a fused projection with float parts
        return [p.data for p in parts], [p.kernel_type for p in parts]
    if isinstance(module, (Linear, Embedding)) and module.weight.dtype == torch.float32:
        return [module.weight], [FLOAT32]
    return None


class FusedDecode:
    """Runs a decode step's forward and LM head in one call; `__call__` gives the step's
    logits, or None for a step it does not run."""

    def __init__(self, decode_model: Any, kv_cache: KVCache, max_rows: int) -> None:
        self._model = decode_model
        self.max_rows = max_rows
        self._k_caches = [k for k, _ in kv_cache.layers]
        self._v_caches = [v for _, v in kv_cache.layers]

    @classmethod
    def create(
        cls, model: torch.nn.Module, kv_cache: KVCache, backend_name: str, device: torch.device
    ) -> FusedDecode | None:
        """The fused step for `model`, or None where it does not apply: another device,
        dtype or attention backend, a tensor-parallel model, weights it cannot read. Packed
        weights take the activations the model's packed projections take."""
        if device.type != "cpu" or backend_name != "cpu" or type(model) is not Transformer:
            return None
        if model.norm.weight.dtype != torch.float32 or kv_cache.storage.dtype != torch.float32:
            return None
        args = model.args
        modules = [model.tok_embeddings, model.output]
        for layer in model.layers:
            attention, mlp = layer.attention, layer.feed_forward
            if not (attention.fused and mlp.fused):
                return None
            modules += [attention.wqkv, attention.wo, mlp.w13, mlp.w2]
        parts = [_parts(m) for m in modules]
        if any(p is None for p in parts):
            return None
        packed = [m.activations for m in modules if isinstance(m, PackedLinear)]
        activations = packed[0] if packed else "float"
        projections = parts[1:]
        integer = activations != "float" and all(
            FLOAT32 not in types and BF16 not in types for _, types in projections
        )
        input_major = all(
            types == [FLOAT32] and weights[0].stride(0) == 1 for weights, types in projections
        )
        rope = torch.view_as_real(model.rope_freqs).contiguous()  # [max_len, head_dim / 2, 2]
        decode = torch.classes.loom.DecodeModel(
            args.dim, args.n_heads, args.n_kv_heads, args.head_dim, args.hidden_dim,
            args.norm_eps, rope, model.norm.weight, ACTIVATION_CODES[activations],
        )  # fmt: skip
        decode.set_embedding(*parts[0])
        decode.set_output(*parts[1])
        for i, layer in enumerate(model.layers):
            wqkv, wo, w13, w2 = parts[2 + 4 * i : 6 + 4 * i]
            decode.add_layer(
                layer.attention_norm.weight, layer.ffn_norm.weight, *wqkv, *wo, *w13, *w2
            )
        if integer:
            max_rows = MAX_FUSED_INTEGER_ROWS
        elif input_major:
            max_rows = MAX_FUSED_FLOAT32_ROWS
        else:
            max_rows = MAX_FUSED_ROWS
        return cls(decode, kv_cache, max_rows)

    def __call__(self, batch: StepBatch) -> torch.Tensor | None:
        meta = batch.attn
        if batch.input_ids.numel() > self.max_rows:
            return None
        tables, seq_lens = meta.block_tables, meta.seq_lens
        if meta.max_query_len != 1:
            # A sequence of several tokens (a speculative verification, a short prefill chunk)
            # runs as one decode row per token over the context up to it: the step writes
            # every row's K/V before any row attends, so each sees the rows before it.
            starts = meta.query_start_loc_host
            lens = torch.tensor(starts).diff()
            tables = tables.index_select(0, torch.repeat_interleave(lens))
            seq_lens = (batch.positions + 1).to(torch.int32)
        logits = self._model.forward(
            batch.input_ids, batch.positions, self._k_caches, self._v_caches,
            meta.slot_mapping, tables, seq_lens,
        )  # fmt: skip
        if batch.logits_rows.numel() != logits.shape[0]:  # a 1-token prompt chunk has none
            logits = logits.index_select(0, batch.logits_rows)
        return logits
