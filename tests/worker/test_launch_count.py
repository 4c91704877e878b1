"""What a decode layer launches on the `triton` backend, counted on the CPU: its four GEMMs
plus five other kernels, split-KV or not (the last split of a tile reduces, in the same launch).

Every torch op the layer dispatches is recorded (views and bare allocations launch nothing on
a GPU; any other op is at least one kernel), and every Triton launch, with the recording
paused while the interpreter runs it (it copies tensors about in torch). The device check
counts the same on a GPU with the profiler (bench/gpu_parts.py).
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from contract.sampling import SamplingParams
from tests.worker.driver import start_worker
from worker.attention.triton_backend import triton_missing
from worker.step_batch import RequestState

pytestmark = pytest.mark.skipif(triton_missing() is not None, reason="triton is not installed")

GREEDY = SamplingParams(temperature=0.0)
aten = torch.ops.aten
GEMMS = {aten.linear.default, aten.mm.default, aten.addmm.default, aten.bmm.default}
ALLOCATIONS = {aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default}


class LayerLaunches(TorchDispatchMode):
    """Per layer: GEMMs, Triton launches by kernel, and every other kernel-launching op."""

    def __init__(self, model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.layer: int | None = None
        self.paused = False
        self.gemms: Counter[int] = Counter()
        self.triton: dict[int, list[str]] = {}
        self.other: dict[int, list[str]] = {}
        for index, block in enumerate(model.layers):
            block.register_forward_pre_hook(lambda *_, i=index: setattr(self, "layer", i))
            block.register_forward_hook(lambda *_: setattr(self, "layer", None))
        from triton.runtime.interpreter import InterpretedFunction

        launch = InterpretedFunction.run

        def counted(kernel, *args, **kwargs):
            if self.layer is not None:
                self.triton.setdefault(self.layer, []).append(kernel.fn.__name__)
            self.paused = True
            try:
                return launch(kernel, *args, **kwargs)
            finally:
                self.paused = False

        monkeypatch.setattr(InterpretedFunction, "run", counted)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.layer is not None and not self.paused:
            if func in GEMMS:
                self.gemms[self.layer] += 1
            elif not (func.is_view or func in ALLOCATIONS):
                self.other.setdefault(self.layer, []).append(str(func))
        return func(*args, **(kwargs or {}))


def decode_step(worker, contexts: list[int]):
    """The batch of a decode-only step of sequences with these context lengths."""
    scheduled, first_block = [], 0
    for i, context in enumerate(contexts):
        blocks = list(range(first_block, first_block + -(-context // worker.block_size)))
        first_block += len(blocks)
        state = RequestState(f"r{i}", [5] * context, blocks, GREEDY, context - 1, context - 1)
        scheduled.append((state, 1))
    return worker.build_batch(scheduled)


@pytest.mark.slow
def test_a_decode_layer_is_its_gemms_and_at_most_five_other_kernels(
    stories_dir, monkeypatch
) -> None:
    worker = start_worker(stories_dir, device="cpu", attention_backend="triton")
    model = worker.model
    expected = [
        "add_rms_norm_kernel",  # the residual add (none in layer 0) and the attention norm
        "rope_store_kernel",  # Q and K rotated, K and V into their slots
        "paged_attention_kernel",  # split or not
        "add_rms_norm_kernel",
        "silu_mul_kernel",
    ]
    n_kv_heads = model.args.n_kv_heads
    for num_sms, splits in ((1, 1), (132, 2)):  # one SM: unsplit; an H100's: split-KV
        worker.attention_backend.num_sms = num_sms
        batch = decode_step(worker, [512, 7])  # 512 keys: 2 splits of 256
        assert worker.attention_backend.splits_for(batch.attn, n_kv_heads) == splits
        with torch.inference_mode():  # once before: the first split step zeroes the counters
            model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
        recorder = LayerLaunches(model, monkeypatch)
        with torch.inference_mode(), recorder:
            model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
        for layer in range(model.args.n_layers):
            assert recorder.gemms[layer] == 4  # wqkv, wo, w13, w2
            assert recorder.triton[layer] == expected
            assert recorder.other.get(layer, []) == []

    # The count could fail: without the fused ops, the torch compositions come back.
    for module in model.modules():
        if hasattr(type(module), "fused_ops"):
            module.fused_ops = None
    recorder = LayerLaunches(model, monkeypatch)
    with torch.inference_mode(), recorder:
        model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
    assert len(recorder.other[1]) + len(recorder.triton[1]) > 5
