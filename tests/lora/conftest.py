"""A random Llama and the bundled stories260K in HF's layout, each with LoRA adapters written
by PEFT, shared by the LoRA tests (writing them takes transformers a few seconds)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import STORIES_DIR
from tests.lora.adapters import hf_copy, write_peft_adapter, write_random_hf_model


@dataclass(frozen=True)
class AdaptedModel:
    model_dir: Path
    adapters: dict[str, Path]  # name -> PEFT directory


def _adapters(model_dir: Path, out: Path) -> dict[str, Path]:
    return {
        # Every projection, rank 8.
        "all8": write_peft_adapter(model_dir, out / "all8", seed=1),
        # Some projections, another rank and alpha, rsLoRA's scaling.
        "qvdown4": write_peft_adapter(
            model_dir,
            out / "qvdown4",
            seed=2,
            rank=4,
            alpha=8.0,
            targets=("q_proj", "v_proj", "down_proj"),
            use_rslora=True,
        ),  # fmt: skip
        # The MLP's gate and up only (w13 half adapted), rank 16.
        "gateup16": write_peft_adapter(
            model_dir,
            out / "gateup16",
            seed=3,
            rank=16,
            alpha=16.0,
            targets=("gate_proj", "up_proj", "k_proj"),
        ),  # fmt: skip
    }


@pytest.fixture(scope="session")
def random_adapted(tmp_path_factory) -> AdaptedModel:
    root = tmp_path_factory.mktemp("lora-random")
    model_dir = write_random_hf_model(root, STORIES_DIR / "tokenizer.model")
    return AdaptedModel(model_dir, _adapters(model_dir, root / "adapters"))


@pytest.fixture(scope="session")
def stories_adapted(tmp_path_factory) -> AdaptedModel:
    root = tmp_path_factory.mktemp("lora-stories")
    model_dir = hf_copy(STORIES_DIR, root / "hf")
    return AdaptedModel(model_dir, _adapters(model_dir, root / "adapters"))
