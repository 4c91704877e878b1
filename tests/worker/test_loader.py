"""Checkpoint layouts load to the same model; broken checkpoints say which file and tensor."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.worker.checkpoint_writers import export_hf, split_meta
from tests.worker.driver import (
    all_position_logits,
    assert_same_model_logits,
    read_meta_model,
    start_worker,
)
from worker.hf_layout import write_hf_checkpoint
from worker.loader import CheckpointError
from worker.model_args import meta_hidden_dim

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


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_hf_export_gives_the_same_logits(stories, reference_logits, tmp_path):
    hf_dir = export_hf(stories, tmp_path / "hf")
    worker = start_worker(hf_dir)
    assert worker.info().model_name == "hf"
    assert_reference_logits(worker, reference_logits)


def test_hf_layouts_own_exporter_gives_the_same_logits(stories, reference_logits, tmp_path):
    # worker.hf_layout writes the checkpoint transformers reads in the benchmarks, from the
    # names it maps back at load; the exporter above keeps its own table as the oracle.
    hf_dir = write_hf_checkpoint(stories.model_dir, tmp_path / "bench-hf")
    assert_reference_logits(start_worker(hf_dir), reference_logits)


def test_hf_export_as_pytorch_bin_gives_the_same_logits(stories, reference_logits, tmp_path):
    hf_dir = export_hf(stories, tmp_path / "hf", safetensors=False)
    assert_reference_logits(start_worker(hf_dir), reference_logits)


def test_hf_export_with_tied_embeddings_gives_the_same_logits(stories, reference_logits, tmp_path):
    # stories260K ties its output to its embedding; the Meta file stores both anyway.
    hf_dir = export_hf(stories, tmp_path / "hf", tied=True)
    assert_reference_logits(start_worker(hf_dir), reference_logits)


def test_two_model_parallel_shards_give_the_same_logits(stories, reference_logits, tmp_path):
    sharded = split_meta(stories, tmp_path / "mp2", num_shards=2)
    assert_reference_logits(start_worker(sharded), reference_logits)


def test_meta_vocab_size_minus_one_is_read_from_the_embedding(stories, reference_logits, tmp_path):
    model_dir = copy_model(stories.model_dir, tmp_path / "m")
    params = {**stories.params, "vocab_size": -1}
    (model_dir / "params.json").write_text(json.dumps(params))
    worker = start_worker(model_dir)
    assert worker.info().vocab_size == 512
    assert_reference_logits(worker, reference_logits)


def test_meta_checkpoint_with_rope_freqs_and_without_output_weight(
    stories, reference_logits, tmp_path
):
    # rope.freqs (older releases) is recomputed; a missing output.weight means it is tied to
    # the embedding, as stories260K's is.
    model_dir = copy_model(stories.model_dir, tmp_path / "m")
    weights = {k: v for k, v in stories.weights.items() if k != "output.weight"}
    weights["rope.freqs"] = torch.ones(4)
    torch.save(weights, model_dir / "consolidated.00.pth")
    assert_reference_logits(start_worker(model_dir), reference_logits)


@pytest.mark.parametrize(
    ("dim", "multiple_of", "ffn_dim_multiplier", "hidden_dim"),
    [
        (64, 4, None, 172),  # stories260K
        (4096, 256, None, 11008),  # Llama 2 7B
        (8192, 4096, 1.3, 28672),  # Llama 2 70B
        (4096, 1024, 1.3, 14336),  # Llama 3 8B
    ],
)
def test_mlp_width_is_derived_as_meta_does(dim, multiple_of, ffn_dim_multiplier, hidden_dim):
    assert meta_hidden_dim(dim, multiple_of, ffn_dim_multiplier) == hidden_dim


def test_bfloat16_weights_run_close_to_float32(stories, reference_logits):
    worker = start_worker(stories.model_dir, dtype="bfloat16")
    assert worker.info().dtype == "bfloat16"
    logits = all_position_logits(worker, PROMPT)
    assert logits.dtype == torch.float32
    assert (logits - reference_logits).abs().max() < 0.5
    assert (logits.argmax(-1) == reference_logits.argmax(-1)).float().mean() > 0.8


def expect_error(model_dir: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        start_worker(model_dir)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_missing_shard_file_is_named(stories, tmp_path):
    model_dir = copy_model(stories.model_dir, tmp_path / "m")
    (model_dir / "consolidated.00.pth").unlink()
    expect_error(model_dir, "consolidated.00.pth", "missing")


def test_missing_shard_of_two_is_named(stories, tmp_path):
    sharded = split_meta(stories, tmp_path / "mp2", num_shards=2)
    (sharded / "consolidated.00.pth").unlink()
    expect_error(sharded, str(sharded / "consolidated.00.pth"), "missing")


def test_directory_without_parameters_is_refused(tmp_path):
    expect_error(tmp_path, "params.json", "config.json")


def test_truncated_torch_file_names_file_and_tensor(stories, tmp_path):
    model_dir = copy_model(stories.model_dir, tmp_path / "m")
    shard = model_dir / "consolidated.00.pth"
    # torch.save numbers the storages of a dict of distinct tensors in order: the 8th tensor's
    # bytes are the zip entry ".../data/7". Cut the file in the middle of them.
    with zipfile.ZipFile(shard) as archive:
        entry = next(i for i in archive.infolist() if i.filename.endswith("/data/7"))
        data_start = entry.header_offset + 30 + len(entry.filename) + len(entry.extra)
    shard.write_bytes(shard.read_bytes()[: data_start + entry.file_size // 2])
    expect_error(model_dir, str(shard), "truncated", f"tensor {list(stories.weights)[7]} is cut")


def test_truncated_safetensors_names_file_and_tensor(stories, tmp_path):
    hf_dir = export_hf(stories, tmp_path / "hf")
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    # The tensor stored last in the file is the one cut short.
    header_len = int.from_bytes(weights.read_bytes()[:8], "little")
    header = json.loads(weights.read_bytes()[8 : 8 + header_len])
    header.pop("__metadata__", None)
    last = max(header, key=lambda name: header[name]["data_offsets"][1])
    expect_error(hf_dir, str(weights), "truncated", last)


def test_shape_mismatch_names_file_tensor_and_shapes(stories, tmp_path):
    model_dir = copy_model(stories.model_dir, tmp_path / "m")
    weights = dict(stories.weights)
    weights["layers.2.feed_forward.w1.weight"] = torch.zeros(170, 64)
    torch.save(weights, model_dir / "consolidated.00.pth")
    expect_error(
        model_dir,
        str(model_dir / "consolidated.00.pth"),
        "layers.2.feed_forward.w1.weight",
        "(170, 64)",
        "(172, 64)",
    )


def test_shape_mismatch_in_one_shard_names_that_shard(stories, tmp_path):
    sharded = split_meta(stories, tmp_path / "mp2", num_shards=2)
    shard = torch.load(sharded / "consolidated.01.pth", weights_only=True)
    shard["layers.0.attention.wo.weight"] = torch.zeros(64, 31)
    torch.save(shard, sharded / "consolidated.01.pth")
    expect_error(sharded, "consolidated.01.pth", "layers.0.attention.wo.weight", "(64, 31)")


def test_missing_tensor_is_named(stories, tmp_path):
    model_dir = copy_model(stories.model_dir, tmp_path / "m")
    weights = {k: v for k, v in stories.weights.items() if k != "layers.1.attention.wk.weight"}
    torch.save(weights, model_dir / "consolidated.00.pth")
    expect_error(model_dir, "consolidated.00.pth", "layers.1.attention.wk.weight", "missing")


def test_unexpected_hf_tensor_is_named(stories, tmp_path):
    hf_dir = export_hf(stories, tmp_path / "hf")
    save_file(
        {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}, hf_dir / "extra.safetensors"
    )
    expect_error(hf_dir, "extra.safetensors", "q_proj.bias")
