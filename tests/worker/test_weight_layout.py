"""On the CPU in float32 the projections hold column-major weights: same logits, same shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.worker.driver import all_position_logits, start_worker
from worker.loader import load_checkpoint
from worker.model import Linear, Transformer
from worker.weight_layout import wants_input_major

PROMPT = [1, 403, 407, 261, 378, 309, 7, 35, 43]


def is_column_major(weight: torch.Tensor) -> bool:
    return weight.stride() == (1, weight.shape[0])


def test_projections_are_column_major_and_give_the_row_major_logits(stories_dir):
    worker = start_worker(stories_dir, attention_backend="torch")
    model = worker.model
    embedding = model.tok_embeddings.weight.data_ptr()
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    untied = [m for m in linears if m.weight.data_ptr() != embedding]
    assert len(untied) >= 4 * model.args.n_layers
    for module in untied:
        assert is_column_major(module.weight), module
    assert model.layers[0].attention.wqkv.weight.shape[1] == model.args.dim  # [out, in] kept
    column_major = all_position_logits(worker, PROMPT)

    for module in linears:
        module.weight = nn.Parameter(module.weight.contiguous(), requires_grad=False)
    assert not any(is_column_major(m.weight) for m in untied)
    row_major = all_position_logits(worker, PROMPT)
    # The same products summed in another order: float32 rounding apart.
    assert (column_major - row_major).abs().max().item() < 1e-4
    assert torch.equal(column_major.argmax(-1), row_major.argmax(-1))


def test_a_tied_lm_head_keeps_sharing_the_embedding(stories_dir):
    loaded = load_checkpoint(stories_dir, torch.float32)
    weights = dict(loaded.weights)
    weights["output.weight"] = weights["tok_embeddings.weight"]
    model = Transformer.from_weights(loaded.args, weights, torch.device("cpu"))
    assert model.output.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()
    assert model.tok_embeddings.weight.is_contiguous()  # rows gathered by token id
    assert is_column_major(model.layers[0].feed_forward.w2.weight)


def test_only_float32_on_the_cpu_is_re_laid():
    assert wants_input_major(torch.device("cpu"), torch.float32)
    assert not wants_input_major(torch.device("cpu"), torch.bfloat16)
    assert not wants_input_major(torch.device("cuda"), torch.float32)


def vm_flags_at(address: int) -> list[str]:
    """The VmFlags of this process's mapping that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        first = line.split()[0]
        if "-" in first and ":" not in first:
            start, end = (int(part, 16) for part in first.split("-"))
            inside = start <= address < end
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux's /proc only")
def test_the_column_major_copies_ask_for_huge_pages(stories_dir):
    # "hg": the mapping was advised MADV_HUGEPAGE (whether THP then backs it is the kernel's).
    model = start_worker(stories_dir, attention_backend="torch").model
    for module in (model.layers[0].attention.wqkv, model.layers[-1].feed_forward.w2):
        assert is_column_major(module.weight)
        assert "hg" in vm_flags_at(module.weight.data_ptr()), module
