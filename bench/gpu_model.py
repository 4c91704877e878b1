"""Random-weight models built in memory where they run, for the device check.

A Llama-2-7B-shaped model in bfloat16 is 13 GB: drawn on the GPU it takes a second and no
disk. The GPU machine has no Llama 2 tokenizer (it is Meta's file, kept out of the project),
so the engine gets `IdTokenizer`, under which token i reads as the word `t<i>`: detokenizing
still happens for every token, at about the cost SentencePiece has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.make_random_model import random_weights
from contract.step import StepInput, StepOutput, WorkerInfo
from scheduler import Engine
from scheduler.config import EngineConfig
from worker.loader import LoadedCheckpoint
from worker.model_args import args_from_meta_params
from worker.runner import ModelRunner

LLAMA2_7B = {
    "dim": 4096,
    "n_layers": 32,
    "n_heads": 32,
    "n_kv_heads": 32,
    "vocab_size": 32000,
    "multiple_of": 256,
    "ffn_dim_multiplier": None,
    "norm_eps": 1e-5,
    "max_seq_len": 4096,
    "rope_theta": 10000.0,
}
# The same code path on a CPU, at a size that runs in seconds (its figures mean nothing).
SMOKE = {**LLAMA2_7B, "dim": 128, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4, "vocab_size": 512}
BOS_ID, EOS_ID = 1, 2


class IdTokenizer:
    """Token i <-> the word `t<i>`; 0, 1, 2 are <unk>, BOS, EOS as in Llama's vocabulary."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.bos_id, self.eos_id = BOS_ID, EOS_ID

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [int(word[1:]) for word in text.split()]
        return [self.bos_id, *ids] if add_bos else ids

    def decode(self, token_ids: list[int]) -> str:
        return "".join(f" t{i}" for i in token_ids if i > EOS_ID)

    def id_to_piece(self, token_id: int) -> str:
        return f"▁t{token_id}"

    def anchor_id(self) -> int:
        return EOS_ID + 1


@dataclass
class TimedWorker:
    """The real worker, with the wall time of each step and how many tokens it computed."""

    inner: ModelRunner
    steps: list[tuple[int, float]] = field(default_factory=list)  # (tokens, seconds)

    def info(self) -> WorkerInfo:
        return self.inner.info()

    def execute(self, step: StepInput) -> StepOutput:
        start = time.perf_counter()
        out = self.inner.execute(step)
        self.steps.append((sum(step.num_scheduled_tokens.values()), time.perf_counter() - start))
        return out


def random_llama_engine(
    params: dict[str, Any], device: str, dtype: torch.dtype, seed: int = 0, **settings: Any
) -> tuple[Engine, TimedWorker]:
    """An engine over a random-weight Llama of shape `params`, its weights drawn on `device`;
    `settings` are EngineConfig fields by name."""
    args = args_from_meta_params(params, int(params["vocab_size"]))
    weights = random_weights(params, seed, device=device, dtype=dtype)
    checkpoint = LoadedCheckpoint(args=args, weights=weights, bos_id=BOS_ID, eos_id=EOS_ID)
    config = EngineConfig.from_kwargs(
        model=f"random-llama-{params['dim']}x{params['n_layers']}",
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        **settings,
    )
    worker = TimedWorker(ModelRunner(config.worker, checkpoint))
    return Engine(worker, IdTokenizer(args.vocab_size), config), worker  # type: ignore[arg-type]


def weight_bytes(runner: ModelRunner) -> tuple[int, int]:
    """(all weight bytes, the bytes a decode step reads): a step reads one row of the
    embedding table per token, and every other weight whole."""
    total = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    embedding = runner.model.tok_embeddings.weight
    return total, total - embedding.numel() * embedding.element_size()


def random_hf_llama(params: dict[str, Any], device: str, dtype: torch.dtype):
    """Hugging Face's LlamaForCausalLM of the same shape, initialised randomly on `device`
    (its weights differ from Loom's: only its speed is compared)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    args = args_from_meta_params(params, int(params["vocab_size"]))
    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads,
        max_position_embeddings=args.max_seq_len,
        rms_norm_eps=args.norm_eps,
        rope_theta=args.rope_theta,
    )
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialise straight in the target dtype
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.generation_config.eos_token_id = None  # every request runs to its max_tokens
    model.generation_config.pad_token_id = 0
    return model.eval()
