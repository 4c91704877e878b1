"""GGUF checkpoints written here from stories260K load to the Meta model: F32 to the same
logits, quantized tensors to what the gguf package's own dequantizer gives; every file Loom
cannot read is refused naming what it found."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, quants

from tests.models.gguf_writer import GGUFOptions, gguf_name, write_stories_gguf
from tests.worker.dense_reference import dense_logits
from tests.worker.driver import (
    all_position_logits,
    assert_same_model_logits,
    read_meta_model,
    start_worker,
)
from worker.loader import CheckpointError, load_checkpoint

PROMPT = [1, 403, 14, 292, 77, 5, 498, 260, 261, 13, 51]


@pytest.fixture(scope="module")
def stories(stories_dir):
    return read_meta_model(stories_dir)


@pytest.fixture(scope="module")
def reference_logits(stories):
    return all_position_logits(start_worker(stories.model_dir), PROMPT)


def assert_reference_logits(worker, reference_logits) -> None:
    """The stories260K model's logits, up to the order its float32 sums run in."""
    logits = all_position_logits(worker, PROMPT)
    assert_same_model_logits(logits, reference_logits, n_layers=5)


def test_f32_gguf_gives_the_meta_checkpoints_logits(stories, reference_logits, tmp_path):
    path = write_stories_gguf(stories, tmp_path / "stories.gguf")
    worker = start_worker(path)
    info = worker.info()
    assert (info.model_name, info.vocab_size, info.max_seq_len) == ("stories.gguf", 512, 512)
    assert (info.bos_id, info.eos_id) == (1, 2)
    assert_reference_logits(worker, reference_logits)
    # A directory holding one GGUF file names it too.
    assert_reference_logits(start_worker(tmp_path), reference_logits)


def test_f16_and_tied_output_load_as_they_are(stories, reference_logits, tmp_path):
    types = {name: Q.F16 for name in stories.weights if name.startswith("layers.")}
    path = write_stories_gguf(stories, tmp_path / "f16.gguf", GGUFOptions(types=types, tied=True))
    loaded = load_checkpoint(path, torch.float32)
    w1 = "layers.0.feed_forward.w1.weight"
    assert torch.equal(loaded.weights[w1], stories.weights[w1].half().float())
    assert torch.equal(loaded.weights["output.weight"], stories.weights["tok_embeddings.weight"])
    logits = all_position_logits(start_worker(path), PROMPT)
    assert (logits - reference_logits).abs().max() < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_0, Q.Q4_1])
def test_quantized_gguf_dequantizes_as_the_gguf_package_does(
    stories, reference_logits, tmp_path, qtype
):
    # Every tensor whose rows are whole 32-value blocks is quantized (the 172-wide w2 rows
    # are not, as llama.cpp keeps such tensors in F32).
    path = write_stories_gguf(stories, tmp_path / "q.gguf", GGUFOptions(quantize_all=qtype))
    reader = GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    assert tensors[gguf_name("layers.0.attention.wq.weight")].tensor_type == qtype
    assert tensors[gguf_name("layers.0.feed_forward.w2.weight")].tensor_type == Q.F32
    # The gguf package's dequantization, under Meta's names, is the oracle's weights.
    expected = {name: gguf_dequantize(tensors[gguf_name(name)]) for name in stories.weights}
    loaded = load_checkpoint(path, torch.float32)
    for name, weight in loaded.weights.items():
        assert torch.equal(weight, expected[name]), name
    # Dequantized (the packed path has its own tests: tests/models/test_packed_gguf.py).
    logits = all_position_logits(start_worker(path, quantization="none"), PROMPT)
    oracle = dense_logits(expected, stories.params, PROMPT)
    assert (logits.double() - oracle).abs().max() < 1e-3
    assert not torch.equal(logits, reference_logits)  # quantization did change the model


def gguf_dequantize(tensor) -> torch.Tensor:
    return torch.from_numpy(quants.dequantize(tensor.data, tensor.tensor_type).copy())


def test_quantized_weights_are_cast_to_the_serving_dtype(stories, tmp_path):
    path = write_stories_gguf(stories, tmp_path / "q.gguf", GGUFOptions(quantize_all=Q.Q8_0))
    loaded = load_checkpoint(path, torch.bfloat16)
    assert {w.dtype for w in loaded.weights.values()} == {torch.bfloat16}


def expect_error(path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, torch.float32)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_an_unsupported_architecture_is_named(stories, tmp_path):
    path = write_stories_gguf(stories, tmp_path / "a.gguf", GGUFOptions(architecture="qwen2"))
    expect_error(path, str(path), "architecture 'qwen2' is not supported")


def test_an_unsupported_quantization_type_is_named(stories, tmp_path):
    types = {"layers.1.attention.wv.weight": Q.Q5_0}
    path = write_stories_gguf(stories, tmp_path / "q5.gguf", GGUFOptions(types=types))
    expect_error(path, "blk.1.attn_v.weight", "Q5_0", "Q4_K")


def test_scaled_rope_is_refused(stories, tmp_path):
    def rope_scaling(writer):
        writer.add_string("llama.rope.scaling.type", "yarn")

    path = write_stories_gguf(stories, tmp_path / "r.gguf", GGUFOptions(extra_kv=rope_scaling))
    expect_error(path, "RoPE scaling 'yarn'")


def test_a_truncated_gguf_is_refused_naming_the_file(stories, tmp_path):
    path = write_stories_gguf(stories, tmp_path / "cut.gguf")
    path.write_bytes(path.read_bytes()[:-5000])
    expect_error(path, str(path), "cannot read the GGUF file")


def test_an_unknown_tensor_is_named(stories, tmp_path):
    def extra(writer):
        writer.add_tensor("blk.0.attn_q.bias", np.zeros(64, dtype=np.float32))

    path = write_stories_gguf(stories, tmp_path / "x.gguf", GGUFOptions(extra_kv=extra))
    expect_error(path, "unexpected tensor blk.0.attn_q.bias")
