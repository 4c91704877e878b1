"""Quantizing at load (`--quantization q8_0|q4_0|bf16`) writes llama.cpp's blocks (the gguf
package's bfloat16) to the byte; a float checkpoint so quantized serves near its float self;
without a compiler the packed weights fall back to floats with one warning; running out of
memory while loading says so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from tests.worker.dense_reference import dense_logits
from tests.worker.driver import all_position_logits, read_meta_model, start_worker
from worker.cpu_kernels import load_cpu_kernels
from worker.loader import load_checkpoint
from worker.packed_modules import PackedLinear
from worker.packed_weights import (
    GROUPED,
    PackedTensor,
    keep_packed,
    quantize_bf16,
    quantize_q4_0,
    quantize_q8_0,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = [1, 403, 14, 292, 77, 5, 498, 260, 261, 13, 51]
LONG = PROMPT * 4
needs_kernels = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler here")


@pytest.mark.parametrize(
    ("quantize", "qtype"),
    [(quantize_q8_0, Q.Q8_0), (quantize_q4_0, Q.Q4_0), (quantize_bf16, Q.BF16)],
)
def test_load_time_quantizers_write_the_reference_blocks(quantize, qtype) -> None:
    values = np.random.default_rng(0).standard_normal((24, 96)).astype(np.float32)
    values[0, :32] = 0  # an all-zero block
    values[1, :32] = np.linspace(-1, 1, 32)  # exact halves: roundf rounds them away from zero
    values[2, 5] = -values[2, :32].__abs__().max() - 1  # the extreme is negative
    ours = quantize(torch.from_numpy(values))
    assert ours.dtype == torch.uint8
    assert np.array_equal(ours.numpy(), quants.quantize(values, qtype))


@needs_kernels
@pytest.mark.parametrize(
    ("quantization", "bound"),
    # 8-bit activations (int16 would do better): as for GGUFs. bfloat16 weights multiply
    # float32 activations: the oracle's own values to float32 rounding.
    [("q8_0", 0.25), ("q4_0", 0.25), ("bf16", 1e-4)],
)
def test_a_float_checkpoint_quantized_at_load_serves_its_quantized_weights(
    stories_dir, quantization, bound
) -> None:
    quantized = start_worker(stories_dir, quantization=quantization)
    w13 = quantized.model.layers[0].feed_forward.w13
    # Q4_0 is regrouped by eights for the kernels (worker/csrc/quant_blocks.h).
    expected = GROUPED.get(quantization.upper(), quantization.upper())
    assert isinstance(w13, PackedLinear) and w13.parts[0].type_name == expected
    # stories260K's MLP is 172 wide, not whole 32-value blocks: w2 stays float.
    assert not isinstance(quantized.model.layers[0].feed_forward.w2, PackedLinear)
    # The oracle: a float64 dense forward over the blocks' dequantized values.
    loaded = load_checkpoint(stories_dir, torch.float32, quantization)
    weights = {
        name: w.dequantize() if isinstance(w, PackedTensor) else w
        for name, w in loaded.weights.items()
    }
    params = read_meta_model(stories_dir).params
    floats = torch.log_softmax(all_position_logits(start_worker(stories_dir), LONG), -1)
    for prompt in (PROMPT, LONG):
        ours = torch.log_softmax(all_position_logits(quantized, prompt), -1).double()
        oracle = torch.log_softmax(dense_logits(weights, params, prompt), -1)
        top = oracle.topk(5, -1).indices
        assert (ours.gather(-1, top) - oracle.gather(-1, top)).abs().max() < bound
    # Quantizing did change the model (the oracle is not the float checkpoint).
    assert (oracle.float() - floats).abs().max() > 0.01


def test_load_time_quantization_is_for_the_cpu() -> None:
    with pytest.raises(ValueError, match="q8_0 runs on the CPU only"):
        keep_packed("q8_0", torch.device("cuda"))
    assert not keep_packed("auto", torch.device("cuda"))
    assert not keep_packed("none", torch.device("cpu"))


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env or dict(os.environ),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_without_a_compiler_packed_weights_fall_back_to_floats(stories_dir, tmp_path) -> None:
    # A fresh build directory and a compiler that does not exist: the build fails for real.
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), TORCH_EXTENSIONS_DIR=str(tmp_path))
    code = (
        "import logging\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from tests.worker.driver import read_meta_model, start_worker\n"
        "from tests.models.gguf_writer import GGUFOptions, write_stories_gguf\n"
        "from gguf import GGMLQuantizationType as Q\n"
        f"files = read_meta_model(__import__('pathlib').Path({str(stories_dir)!r}))\n"
        f"path = write_stories_gguf(files, __import__('pathlib').Path({str(tmp_path)!r}) / "
        "'q.gguf', GGUFOptions(quantize_all=Q.Q8_0))\n"
        "worker = start_worker(path)\n"
        "print(type(worker.model.layers[0].feed_forward.w13).__name__)\n"
    )
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Linear"]  # the float module: weights dequantized
    assert result.stderr.count("cannot build the CPU kernels") == 1


def test_running_out_of_memory_while_loading_says_so(tmp_path) -> None:
    # A Q8_0 file whose 8M-value matrices need 32 MiB each as float32; the process may map
    # the file and little more (RLIMIT_AS), so dequantizing them fails for real.
    code = f"""
import resource, torch, numpy as np
from gguf import GGUFWriter, GGMLQuantizationType as Q, quants
from worker.loader import CheckpointError, load_checkpoint
path = {str(tmp_path / "big.gguf")!r}
w = GGUFWriter(path, "llama")
for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", 1024),
                   ("feed_forward_length", 8192), ("head_count", 8)):
    getattr(w, "add_" + key)(value)
w.add_layer_norm_rms_eps(1e-5)
rng = np.random.default_rng(0)
def matrix(rows, cols):
    return quants.quantize(rng.standard_normal((rows, cols), dtype=np.float32), Q.Q8_0)
w.add_tensor("token_embd.weight", matrix(64, 1024), raw_dtype=Q.Q8_0)
w.add_tensor("output_norm.weight", np.ones(1024, np.float32))
for name, (rows, cols) in dict(attn_q=(1024, 1024), attn_k=(1024, 1024), attn_v=(1024, 1024),
        attn_output=(1024, 1024), ffn_gate=(8192, 1024), ffn_up=(8192, 1024),
        ffn_down=(1024, 8192)).items():
    w.add_tensor(f"blk.0.{{name}}.weight", matrix(rows, cols), raw_dtype=Q.Q8_0)
for name in ("attn_norm", "ffn_norm"):
    w.add_tensor(f"blk.0.{{name}}.weight", np.ones(1024, np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 80 * 2**20, resource.RLIM_INFINITY))
try:
    load_checkpoint(path, torch.float32, "none")
except CheckpointError as exc:
    print(exc)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("out of memory: "), message
    assert "needs 0.03 GiB as float32" in message and "GiB available" in message
    assert "corrupt" not in message and "wrong number of bytes" not in message
