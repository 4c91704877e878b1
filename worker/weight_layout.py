"""How the projection weights sit in memory on the CPU.

A Linear's weight is [out_features, in_features] (Meta's and torch's convention), and
`F.linear(x, w)` multiplies by its transpose. Stored that way, the CPU's float32 GEMM runs the
small row counts of decode steps (4-128 rows) markedly slower than when the transpose is the
contiguous one (BENCHMARKS.md, "projection weights row-major or column-major"). So on the CPU
each projection keeps its [out, in] shape and name but holds a column-major view of an
[in, out] tensor: nothing that reads the weight changes, only which GEMM torch picks. The
[in, out] copies ask for 2 MiB pages (worker/host_memory.py): a decode step streams every one
of them, and on 4 KiB pages a 60M float32 model's step took 1.08x as long (Zen 4).
"""

from __future__ import annotations

import torch
from torch import nn

from worker.host_memory import zeros_on_huge_pages


def wants_input_major(device: torch.device, dtype: torch.dtype) -> bool:
    """Where the layout was measured to pay: float32 GEMMs on the CPU."""
    return device.type == "cpu" and dtype == torch.float32


def store_input_major(model: nn.Module, linear_type: type[nn.Module]) -> None:
    """Re-lay the weight of every `linear_type` module of `model` as described above, one
    at a time (each copy freed before the next); a weight that shares memory with another
    parameter (a tied embedding, which gathers rows) is left as it is."""
    others = {
        p.data_ptr()
        for module in model.modules()
        if not isinstance(module, linear_type)
        for p in module.parameters(recurse=False)
    }
    for module in model.modules():
        if not isinstance(module, linear_type):
            continue
        weight = module.weight
        if weight.data_ptr() in others or weight.dim() != 2:
            continue
        if weight.device.type == "cpu":
            input_major = zeros_on_huge_pages((weight.shape[1], weight.shape[0]), weight.dtype)
            input_major.copy_(weight.t())
        else:
            input_major = weight.t().contiguous()
        module.weight = nn.Parameter(input_major.t(), requires_grad=False)
