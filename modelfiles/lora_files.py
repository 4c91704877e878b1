"""What a LoRA adapter's files say, without torch: Hugging Face PEFT directories
(adapter_config.json + adapter_model.safetensors), read and checked against the base model
before any tensor is loaded, so a bad adapter is refused with one clear line.

An adapter adds, to a projection y = W x, the low-rank term scaling * B (A x): A is
[rank, in_features], B is [out_features, rank]. Loom names the seven projections it adapts
q, k, v, o (attention) and gate, up, down (the MLP).

    # PEFT tensor base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
    #   -> layer 3, module "q", part "A"
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODULES = ("q", "k", "v", "o", "gate", "up", "down")
_HF_MODULES = {
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
}
_PEFT_TENSOR = re.compile(
    r"(?:base_model\.model\.)?model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])"
    r"(?:\.[\w-]+)?\.weight"
)
_FLOAT_DTYPES = ("F32", "F16", "BF16")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_MAX_HEADER_BYTES = 100 << 20


class LoraError(ValueError):
    """An adapter Loom cannot serve: the message names the file and what is wrong."""


@dataclass(slots=True, frozen=True)
class BaseShapes:
    """The base model's projection sizes an adapter must match."""

    dim: int
    q_dim: int  # n_heads * head_dim
    kv_dim: int  # n_kv_heads * head_dim
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int

    @classmethod
    def of(cls, model: Any) -> BaseShapes:
        """From anything with the model's hyper-parameters by name (WorkerInfo, ModelArgs)."""
        return cls(
            dim=model.dim,
            q_dim=model.n_heads * model.head_dim,
            kv_dim=model.n_kv_heads * model.head_dim,
            hidden_dim=model.hidden_dim,
            n_layers=model.n_layers,
            n_heads=model.n_heads,
            n_kv_heads=model.n_kv_heads,
        )

    def in_out(self, module: str) -> tuple[int, int]:
        return {
            "q": (self.dim, self.q_dim),
            "k": (self.dim, self.kv_dim),
            "v": (self.dim, self.kv_dim),
            "o": (self.q_dim, self.dim),
            "gate": (self.dim, self.hidden_dim),
            "up": (self.dim, self.hidden_dim),
            "down": (self.hidden_dim, self.dim),
        }[module]


@dataclass(slots=True, frozen=True)
class LoraTensor:
    """One adapted projection of one layer: where its A and B are in the weights file."""

    layer: int
    module: str  # one of MODULES
    rank: int
    a_name: str  # [rank, in_features]
    b_name: str  # [out_features, rank]


@dataclass(slots=True, frozen=True)
class LoraManifest:
    """A checked adapter: everything but its tensors' values."""

    path: str  # the directory
    weights_file: str
    rank: int  # the largest rank of any projection
    scaling: dict[str, float]  # module -> alpha / rank (alpha / sqrt(rank) with rsLoRA)
    tensors: tuple[LoraTensor, ...]
    # HF's q/k rows are in rotate-half order; Loom's model holds Meta's interleaved order.
    rotate_half_qk: bool = True
    modules: tuple[str, ...] = field(default=())
    file_format: str = "peft"  # or "gguf" (modelfiles/lora_gguf.py)


def read_lora(path: str | Path, base: BaseShapes, max_rank: int) -> LoraManifest:
    """Read and check an adapter (a PEFT directory or a GGUF file) against `base`; LoraError
    says what is wrong."""
    from modelfiles.lora_gguf import is_gguf_file, read_gguf_lora

    directory = Path(path)
    if is_gguf_file(directory):
        return read_gguf_lora(directory, base, max_rank)
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is not a directory"
        raise LoraError(
            f"{path}: {what}; a LoRA adapter is a PEFT directory ({CONFIG_FILE} + "
            f"{WEIGHTS_FILE}) or a GGUF file"
        )
    config = _read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        found = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
        raise LoraError(
            f"{directory}: no {WEIGHTS_FILE} (found {found}); Loom reads "
            "safetensors adapters, not pickles"
        )
    header = read_safetensors_header(weights)
    tensors = _pair_tensors(weights, header, base, max_rank)
    rank = int(config["r"])
    alpha = float(config.get("lora_alpha", rank))
    modules = tuple(sorted({t.module for t in tensors}, key=MODULES.index))
    for t in tensors:
        if t.rank != rank and not config.get("rank_pattern"):
            raise LoraError(
                f"{weights}: {t.a_name} has rank {t.rank}, {CONFIG_FILE} says r = {rank}"
            )
    root = math.sqrt if config.get("use_rslora") else float
    ranks = {t.module: t.rank for t in tensors}
    scaling = {m: alpha / root(ranks[m]) for m in modules}
    return LoraManifest(
        path=str(directory),
        weights_file=str(weights),
        rank=max(ranks.values()),
        scaling=scaling,
        tensors=tuple(tensors),
        modules=modules,
    )


def _read_config(directory: Path) -> dict:
    config_path = directory / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise LoraError(f"{directory}: no {CONFIG_FILE}; not a PEFT LoRA adapter") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraError(f"{config_path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise LoraError(f"{config_path}: expected a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise LoraError(f"{config_path}: peft_type is {peft_type!r}; Loom serves LORA adapters")
    unsupported = {
        "use_dora": "DoRA",
        "fan_in_fan_out": "fan_in_fan_out (Conv1D layers)",
        "modules_to_save": "modules_to_save (fully trained extra modules)",
        "alpha_pattern": "per-module alpha_pattern",
        "rank_pattern": "per-module rank_pattern",
        "layer_replication": "layer_replication",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise LoraError(f"{config_path}: {what} is not supported")
    if config.get("bias", "none") != "none":
        raise LoraError(f"{config_path}: bias {config['bias']!r} is not supported (only 'none')")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise LoraError(f"{config_path}: r must be an integer >= 1, got {rank!r}")
    alpha = config.get("lora_alpha", rank)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise LoraError(f"{config_path}: lora_alpha must be a finite number, got {alpha!r}")
    return config


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensor index of a safetensors file: name -> {dtype, shape, data_offsets}."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise LoraError(f"{path}: truncated, not a safetensors file")
        (size,) = struct.unpack("<Q", prefix)
        if size > _MAX_HEADER_BYTES:
            raise LoraError(f"{path}: header of {size} bytes, not a safetensors file")
        raw = f.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraError(f"{path}: unreadable header, not a safetensors file") from None
    if not isinstance(header, dict):
        raise LoraError(f"{path}: unreadable header, not a safetensors file")
    header.pop("__metadata__", None)
    return header


def _pair_tensors(
    weights: Path, header: dict[str, dict], base: BaseShapes, max_rank: int
) -> list[LoraTensor]:
    found: dict[tuple[int, str], dict[str, tuple[str, list[int]]]] = {}
    for name, entry in header.items():
        match = _PEFT_TENSOR.fullmatch(name)
        if match is None:
            raise LoraError(
                f"{weights}: tensor {name!r} is not a LoRA A/B of a Llama projection "
                f"(Loom adapts {', '.join(_HF_MODULES)})"
            )
        layer, hf_module, part = int(match[1]), match[2], match[3]
        module = _HF_MODULES.get(hf_module)
        if module is None:
            raise LoraError(
                f"{weights}: target module {hf_module!r} is not one Loom adapts "
                f"({', '.join(_HF_MODULES)})"
            )
        if layer >= base.n_layers:
            raise LoraError(
                f"{weights}: {name} is for layer {layer}, the base model has {base.n_layers} layers"
            )
        if entry.get("dtype") not in _FLOAT_DTYPES:
            raise LoraError(
                f"{weights}: {name} has dtype {entry.get('dtype')!r}; Loom reads "
                f"{', '.join(_FLOAT_DTYPES)}"
            )
        found.setdefault((layer, module), {})[part] = (name, list(entry.get("shape", [])))
    return check_pairs(weights, found, base, max_rank)


def check_pairs(
    weights: Path,
    found: dict[tuple[int, str], dict[str, tuple[str, list[int]]]],
    base: BaseShapes,
    max_rank: int,
) -> list[LoraTensor]:
    """(layer, module) -> {"A": (name, shape), "B": ...} checked into LoraTensors."""
    if not found:
        raise LoraError(f"{weights}: holds no LoRA tensors")
    tensors = []
    for (layer, module), parts in sorted(found.items()):
        if set(parts) != {"A", "B"}:
            missing = ({"A", "B"} - set(parts)).pop()
            raise LoraError(f"{weights}: layer {layer} {module} has no lora_{missing}")
        (a_name, a_shape), (b_name, b_shape) = parts["A"], parts["B"]
        in_features, out_features = base.in_out(module)
        rank = a_shape[0] if len(a_shape) == 2 else -1
        if a_shape != [rank, in_features] or b_shape != [out_features, rank] or rank < 1:
            raise LoraError(
                f"{weights}: {a_name} {a_shape} and {b_name} {b_shape} do not fit the base "
                f"model's {module} projection ({in_features} -> {out_features}): expected "
                f"[r, {in_features}] and [{out_features}, r]"
            )
        if rank > max_rank:
            raise LoraError(f"{weights}: rank {rank} is over --max-lora-rank ({max_rank})")
        tensors.append(LoraTensor(layer, module, rank, a_name, b_name))
    return tensors


def parse_lora_spec(text: str) -> tuple[str, str]:
    """`--lora NAME=PATH` -> (name, path)."""
    name, sep, path = text.partition("=")
    if not sep or not path:
        raise ValueError(f"--lora takes NAME=PATH, got {text!r}")
    check_lora_name(name)
    return name, path


def check_lora_name(name: str) -> str:
    """Adapter names are what the OpenAI `model` field carries: printable, no spaces."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", name or ""):
        raise LoraError(
            f"adapter name must be 1-128 letters, digits or . _ : / - (starting with a letter "
            f"or digit), got {name!r}"
        )
    return name
