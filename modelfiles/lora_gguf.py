"""LoRA adapters as GGUF files (what llama.cpp's convert_lora_to_gguf.py writes), read and
checked as PEFT directories are (modelfiles/lora_files.py). No torch.

The converter keeps PEFT's shapes (lora_a [rank, in], lora_b [out, rank], in numpy's order)
under llama.cpp's tensor names, and permutes the q/k lora_b rows to Meta's interleaved RoPE
order as it does the base's wq/wk, so they load unpermuted.

    # blk.3.attn_q.weight.lora_a -> layer 3, module "q", part A
"""

from __future__ import annotations

import re
from pathlib import Path

from modelfiles.lora_files import BaseShapes, LoraError, LoraManifest, check_pairs
from modelfiles.model_source import UnreadableModelError

GGUF_MAGIC = b"GGUF"
_MODULES = {
    "attn_q": "q", "attn_k": "k", "attn_v": "v", "attn_output": "o",
    "ffn_gate": "gate", "ffn_up": "up", "ffn_down": "down",
}  # fmt: skip
_TENSOR = re.compile(r"blk\.(\d+)\.(\w+)\.weight\.lora_([ab])")
_FLOAT_TYPES = ("F32", "F16")


def is_gguf_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_gguf_lora(path: Path, base: BaseShapes, max_rank: int) -> LoraManifest:
    from modelfiles.gguf_file import read_gguf

    try:
        reader = read_gguf(path)
        metadata = reader.metadata()
    except UnreadableModelError as exc:
        raise LoraError(str(exc)) from None
    kind = (metadata.get("general.type"), metadata.get("adapter.type"))
    if kind != ("adapter", "lora"):
        raise LoraError(f"{path}: a GGUF file, but not a LoRA adapter (general.type "
                        f"{kind[0]!r}, adapter.type {kind[1]!r})")  # fmt: skip
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise LoraError(f"{path}: an adapter of a {arch!r} model; Loom serves llama")
    alpha = metadata.get("adapter.lora.alpha")
    if not isinstance(alpha, (int, float)):
        raise LoraError(f"{path}: no adapter.lora.alpha")
    found: dict[tuple[int, str], dict[str, tuple[str, list[int]]]] = {}
    for tensor in reader.tensors.values():
        match = _TENSOR.fullmatch(tensor.name)
        module = _MODULES.get(match[2]) if match else None
        if module is None:
            raise LoraError(f"{path}: tensor {tensor.name!r} is not a LoRA A/B of a Llama "
                            f"projection (Loom adapts {', '.join(_MODULES)})")  # fmt: skip
        if tensor.type_name not in _FLOAT_TYPES:
            raise LoraError(
                f"{path}: {tensor.name} is {tensor.type_name}; Loom reads "
                f"{', '.join(_FLOAT_TYPES)} adapters (--outtype f32 or f16)"
            )
        part = match[3].upper()
        found.setdefault((int(match[1]), module), {})[part] = (
            tensor.name,
            [int(n) for n in tensor.shape],
        )
    tensors = check_pairs(path, found, base, max_rank)
    ranks = {t.module: t.rank for t in tensors}
    return LoraManifest(
        path=str(path),
        weights_file=str(path),
        rank=max(ranks.values()),
        scaling={m: float(alpha) / r for m, r in ranks.items()},
        tensors=tuple(tensors),
        rotate_half_qk=False,
        modules=tuple(sorted(ranks, key=list(_MODULES.values()).index)),
        file_format="gguf",
    )
