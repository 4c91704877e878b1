"""The model's Linear and Embedding over packed weights (worker/packed_weights.py), run by the
CPU kernels: a projection multiplies its float32 input rows by each weight row dequantized in
L1 (a few rows; with `--activations int16` or `int8` it quantizes the input rows per 32
values and takes integer dot products, as llama.cpp does with int8), or dequantizes the
blocks a chunk at a time into a float GEMM (many rows); the embedding dequantizes the rows it
looks up.

`install_packed` puts them in a built model in place of the float modules whose weights are
packed, before the float weights are assigned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.config import ACTIVATIONS
from worker.packed_weights import PackedTensor

# `--activations` as the kernels take it.
ACTIVATION_CODES = {name: code for code, name in enumerate(ACTIVATIONS)}

# One part of a projection: packed blocks, or a float [out, in] weight (a fused projection
# whose parts differ in type, as Q4_K_M files mix Q4_K and Q6_K).
Part = PackedTensor | torch.Tensor


class PackedLinear(nn.Module):
    """y = x @ W^T with W the parts' rows one after the other."""

    def __init__(self, parts: list[Part], activations: str = "float") -> None:
        super().__init__()
        self.parts = parts
        self.in_features = parts[0].shape[1]
        self.out_features = sum(p.shape[0] for p in parts)
        self._op = torch.ops.loom.quant_linear.default  # (the kernels are loaded by now)
        self.set_activations(activations)

    def set_activations(self, activations: str) -> None:
        """What the packed parts multiply: float32 rows, or rows quantized to int16 or int8
        (ACTIVATION_CODES). bfloat16 weights always take float32 rows."""
        if any(isinstance(p, PackedTensor) and p.type_name == "BF16" for p in self.parts):
            activations = "float"
        self.activations = activations
        code = ACTIVATION_CODES[activations]
        # Plain attributes, not buffers: nothing may move or cast them (torch's `.to()`).
        self._calls = [_part_fn(p, code) for p in self.parts]
        # The common case, one packed part, called with as little Python as possible: a
        # decode step makes some 120 of these calls.
        parts = self.parts
        single = parts[0] if len(parts) == 1 and isinstance(parts[0], PackedTensor) else None
        self._single = (single.data, single.kernel_type, single.shape[1], code) if single else None
        # Several packed parts (q, k and v; gate and up): one call, no concatenation.
        every = all(isinstance(p, PackedTensor) for p in parts) and len(parts) > 1
        self._parts = ([p.data for p in parts], [p.kernel_type for p in parts],
                       self.in_features, code) if every else None  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._single is not None and x.dim() == 2 and x.dtype == torch.float32:
            return self._op(x, *self._single)  # the kernel reads strided rows itself
        if self._parts is not None and x.dim() == 2 and x.dtype == torch.float32:
            return torch.ops.loom.quant_linear_parts(x, *self._parts)
        rows = x.reshape(-1, self.in_features)
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        outs = [call(rows) for call in self._calls]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kinds = ", ".join(p.type_name if isinstance(p, PackedTensor) else str(p.dtype)
                          for p in self.parts)  # fmt: skip
        return (f"in_features={self.in_features}, out_features={self.out_features}, {kinds}, "
                f"{self.activations} activations")


def _part_fn(part: Part, code: int):
    if isinstance(part, PackedTensor):
        data, kind, k = part.data, part.kernel_type, part.shape[1]
        return lambda x: torch.ops.loom.quant_linear(x.float(), data, kind, k, code)
    return lambda x: F.linear(x.to(part.dtype), part).float()


class PackedEmbedding(nn.Module):
    def __init__(self, packed: PackedTensor) -> None:
        super().__init__()
        self.packed = packed

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        p = self.packed
        flat = token_ids.reshape(-1)
        rows = torch.ops.loom.quant_rows(p.data, flat, p.kernel_type, p.shape[1])
        return rows.reshape(*token_ids.shape, p.shape[1])


def install_packed(
    model: nn.Module, weights: dict[str, object], embedding_type: type[nn.Module]
) -> None:
    """Replace each module whose `weight` in `weights` is packed (a PackedTensor, or a list
    of parts of which one is) by its packed form, and take those entries out of `weights`;
    modules of `embedding_type` become PackedEmbedding, the others PackedLinear."""
    for name in [n for n, w in weights.items() if _is_packed(w)]:
        value = weights.pop(name)
        module_name = name.removesuffix(".weight")
        parent_name, _, attr = module_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if isinstance(old, embedding_type):
            if not isinstance(value, PackedTensor):
                raise TypeError(f"{name}: an embedding must be one packed tensor")
            setattr(parent, attr, PackedEmbedding(value))
        else:
            parts = value if isinstance(value, list) else [value]
            setattr(parent, attr, PackedLinear(parts))


def _is_packed(value: object) -> bool:
    if isinstance(value, PackedTensor):
        return True
    return isinstance(value, list) and any(isinstance(p, PackedTensor) for p in value)


def use_activations(model: nn.Module, activations: str) -> int:
    """Switch the model's packed projections to `activations`; how many there are."""
    modules = [m for m in model.modules() if isinstance(m, PackedLinear)]
    for module in modules:
        module.set_activations(activations)
    return len(modules)
