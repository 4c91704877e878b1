"""Adapter files checked before any tensor loads: every way an adapter can be wrong gets one
line naming the file and the fault (modelfiles/lora_files.py), and --lora's flag form."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from common.checks import InvalidFieldError
from modelfiles.lora_files import BaseShapes, LoraError, parse_lora_spec, read_lora
from worker.config import LoraConfig

# The random model of tests/lora/adapters.py: dim 64, 4 heads and 2 KV heads of 16, MLP 192.
BASE = BaseShapes(dim=64, q_dim=64, kv_dim=32, hidden_dim=192, n_layers=2, n_heads=4, n_kv_heads=2)
PREFIX = "base_model.model.model.layers"


def _write(directory: Path, tensors: dict[str, torch.Tensor], **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "bias": "none", **config}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    return directory


def _pair(layer: int, module: str, rank: int, in_f: int, out_f: int) -> dict[str, torch.Tensor]:
    group = "mlp" if module in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    name = f"{PREFIX}.{layer}.{group}.{module}"
    return {
        f"{name}.lora_A.weight": torch.zeros(rank, in_f),
        f"{name}.lora_B.weight": torch.zeros(out_f, rank),
    }


def test_a_peft_adapter_is_read_with_its_modules_ranks_and_scaling(tmp_path):
    tensors = {**_pair(0, "q_proj", 4, 64, 64), **_pair(1, "down_proj", 4, 192, 64)}
    manifest = read_lora(_write(tmp_path / "a", tensors), BASE, max_rank=8)
    assert manifest.rank == 4
    assert manifest.modules == ("q", "down")
    assert manifest.scaling == {"q": 2.0, "down": 2.0}
    assert [(t.layer, t.module) for t in manifest.tensors] == [(0, "q"), (1, "down")]


def test_rslora_scales_by_the_square_root_of_the_rank(tmp_path):
    adapter = _write(tmp_path / "a", _pair(0, "v_proj", 4, 64, 32), use_rslora=True)
    assert read_lora(adapter, BASE, 8).scaling == {"v": 4.0}


@pytest.mark.parametrize(
    ("tensors", "config", "message"),
    [
        (_pair(0, "q_proj", 16, 64, 64), {"r": 16}, "rank 16 is over --max-lora-rank (8)"),
        (_pair(0, "q_proj", 4, 64, 32), {}, "do not fit the base model's q projection (64 -> 64)"),
        (_pair(0, "k_proj", 4, 48, 32), {}, "expected [r, 64] and [32, r]"),
        (_pair(5, "q_proj", 4, 64, 64), {}, "is for layer 5, the base model has 2 layers"),
        (
            {"base_model.model.lm_head.lora_A.weight": torch.zeros(4, 64)},
            {},
            "tensor 'base_model.model.lm_head.lora_A.weight' is not a LoRA A/B of a Llama proj",
        ),
        (
            {f"{PREFIX}.0.self_attn.qkv_proj.lora_A.weight": torch.zeros(4, 64)},
            {},
            "target module 'qkv_proj' is not one Loom adapts",
        ),
        (
            {f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 64)},
            {},
            "layer 0 q has no lora_B",
        ),
        (_pair(0, "q_proj", 4, 64, 64), {"use_dora": True}, "DoRA is not supported"),
        (_pair(0, "q_proj", 4, 64, 64), {"bias": "all"}, "bias 'all' is not supported"),
        (_pair(0, "q_proj", 4, 64, 64), {"peft_type": "IA3"}, "Loom serves LORA adapters"),
        (_pair(0, "q_proj", 4, 64, 64), {"r": 0}, "r must be an integer >= 1"),
        (_pair(0, "q_proj", 4, 64, 64), {"r": 2}, "has rank 4, adapter_config.json says r = 2"),
        (_pair(0, "q_proj", 4, 64, 64), {"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({}, {}, "holds no LoRA tensors"),
    ],
)
def test_a_bad_adapter_is_refused_naming_the_fault(tmp_path, tensors, config, message):
    adapter = _write(tmp_path / "a", tensors, **config)
    with pytest.raises(LoraError) as caught:
        read_lora(adapter, BASE, max_rank=8)
    assert message in str(caught.value)


def test_malformed_files_are_refused(tmp_path):
    good = _write(tmp_path / "good", _pair(0, "q_proj", 4, 64, 64))
    with pytest.raises(LoraError, match="does not exist"):
        read_lora(tmp_path / "missing", BASE, 8)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(LoraError, match="no adapter_config.json; not a PEFT LoRA adapter"):
        read_lora(no_config, BASE, 8)
    broken_json = shutil.copytree(good, tmp_path / "broken_json")
    (broken_json / "adapter_config.json").write_text("{r: 4")
    with pytest.raises(LoraError, match="adapter_config.json: not valid JSON"):
        read_lora(broken_json, BASE, 8)
    pickle_only = shutil.copytree(good, tmp_path / "pickle_only")
    (pickle_only / "adapter_model.safetensors").rename(pickle_only / "adapter_model.bin")
    with pytest.raises(LoraError, match="no adapter_model.safetensors .found adapter_config.json"):
        read_lora(pickle_only, BASE, 8)
    garbage = shutil.copytree(good, tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    with pytest.raises(LoraError, match="not a safetensors file"):
        read_lora(garbage, BASE, 8)
    truncated = shutil.copytree(good, tmp_path / "truncated")
    (truncated / "adapter_model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(LoraError, match="truncated"):
        read_lora(truncated, BASE, 8)


def test_lora_flag_takes_name_equals_path_once_per_name():
    assert parse_lora_spec("sql-v2=/adapters/sql") == ("sql-v2", "/adapters/sql")
    with pytest.raises(ValueError, match="--lora takes NAME=PATH"):
        parse_lora_spec("/adapters/sql")
    with pytest.raises(LoraError, match="adapter name must be"):
        parse_lora_spec("two words=/x")
    assert LoraConfig(lora=["a=/x", "b=/y"]).lora == ("a=/x", "b=/y")
    with pytest.raises(InvalidFieldError, match="lora names an adapter twice: a, a"):
        LoraConfig(lora=("a=/x", "a=/y"))
    with pytest.raises(InvalidFieldError, match="max_lora_rank must be in"):
        LoraConfig(max_lora_rank=0)
