"""The device check's end-to-end part: the bundled model's greedy text through each path.

Four prompts decode together (a batch of 4: graphs pad nothing, the ladder has 4), through
the Triton backend with CUDA graphs, the Triton backend eagerly and the torch reference.
"""

from __future__ import annotations

import torch

from scheduler import Engine, SamplingParams
from worker.config import BUNDLED_MODEL

PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day, a"]


def _generate(device: torch.device, dtype: str, num_tokens: int, **settings) -> dict:
    engine = Engine.from_model_dir(
        BUNDLED_MODEL, device=device.type, dtype=dtype, max_num_seqs=8, num_kv_blocks=256,
        **settings,
    )  # fmt: skip
    params = SamplingParams(max_tokens=num_tokens, temperature=0.0, ignore_eos=True)
    outputs = engine.generate(PROMPTS, params)
    graphs = engine.worker.decode_graphs
    return {
        "token_ids": [out.token_ids for out in outputs],
        "texts": [out.text for out in outputs],
        "graph_replays": sum(graphs.num_replays.values()) if graphs else 0,
    }


def first_difference(a: list[list[int]], b: list[list[int]]) -> str:
    for request, (x, y) in enumerate(zip(a, b, strict=True)):
        for position, (s, t) in enumerate(zip(x, y, strict=True)):
            if s != t:
                return f"differ: request {request}, token {position}"
    return "identical"


def greedy_texts(device: torch.device, num_tokens: int) -> dict:
    """Per dtype: each path's tokens and text, and which paths agree."""
    on_gpu = device.type == "cuda"
    found = {}
    for dtype in ("float32", "bfloat16") if on_gpu else ("float32",):
        runs = {"triton eager": _generate(device, dtype, num_tokens, attention_backend="triton",
                                          enforce_eager=True)}  # fmt: skip
        if on_gpu:
            runs["triton graphs"] = _generate(device, dtype, num_tokens, attention_backend="triton")
        runs["torch reference"] = _generate(
            device, dtype, num_tokens, attention_backend="torch", enforce_eager=True
        )
        agree = {}
        if on_gpu:
            agree["graphs vs eager"] = first_difference(
                runs["triton graphs"]["token_ids"], runs["triton eager"]["token_ids"]
            )
        agree["triton vs torch"] = first_difference(
            runs["triton eager"]["token_ids"], runs["torch reference"]["token_ids"]
        )
        found[dtype] = {"runs": runs, "agree": agree}
    return found
