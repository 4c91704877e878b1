"""Base models and LoRA adapters the LoRA tests write: a Meta checkpoint in Hugging Face's
layout (what transformers and PEFT read), and PEFT adapters with random A and B (PEFT's own
init makes B zero, an adapter that changes nothing), saved by PEFT itself."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from worker.hf_layout import write_hf_checkpoint
from worker.random_model import random_weights, write_meta_model

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Small but not trivial: grouped-query attention, head_dim 16, a vocabulary of 512.
RANDOM_PARAMS = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 512,
    "multiple_of": 32,
    "norm_eps": 1e-5,
    "max_seq_len": 256,
    "rope_theta": 10000.0,
}


def write_random_hf_model(out_dir: Path, tokenizer: Path, seed: int = 0) -> Path:
    """A random Llama in HF's layout (config.json, model.safetensors, tokenizer.model)."""
    meta = write_meta_model(
        out_dir / "meta", RANDOM_PARAMS, random_weights(RANDOM_PARAMS, seed), tokenizer
    )
    return write_hf_checkpoint(meta, out_dir / "hf")


def hf_copy(meta_dir: Path, out_dir: Path) -> Path:
    """A Meta checkpoint (the bundled stories260K) in HF's layout."""
    return write_hf_checkpoint(meta_dir, out_dir)


@contextmanager
def one_thread() -> Iterator[None]:
    """The oracle's tiny matmuls on one thread: on a loaded machine, more threads only wait
    for each other (20x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_hf_model(model_dir: Path):  # -> transformers LlamaForCausalLM, float32, eval
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


def write_peft_adapter(
    model_dir: Path,
    out_dir: Path,
    seed: int,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = ALL_TARGETS,
    scale: float = 0.2,
    use_rslora: bool = False,
) -> Path:
    """A LoRA adapter of the model in `model_dir`, A and B drawn from `seed`, written by
    PEFT's save_pretrained (adapter_config.json + adapter_model.safetensors)."""

    with one_thread():
        return _write_peft_adapter(
            model_dir, out_dir, seed, rank, alpha, targets, scale, use_rslora
        )


def _write_peft_adapter(model_dir, out_dir, seed, rank, alpha, targets, scale, use_rslora):
    from peft import LoraConfig, get_peft_model

    model = load_hf_model(model_dir)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
        use_rslora=use_rslora,
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                # Large enough that each adapter changes the greedy text.
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(noise * scale / param.shape[1] ** 0.5 * 4)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def peft_model(model_dir: Path, adapter_dir: Path | None):
    """transformers' model with the adapter applied by PEFT (None: the base alone)."""
    base = load_hf_model(model_dir)
    if adapter_dir is None:
        return base
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir)).eval()


def greedy_with_logprobs(
    model, prompt: list[int], max_tokens: int
) -> tuple[list[int], list[float]]:
    """Greedy decoding by full forwards (no cache): ids and each one's log-softmax."""
    ids = list(prompt)
    logprobs = []
    with torch.no_grad(), one_thread():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            scores = torch.log_softmax(logits, dim=-1)
            token = int(torch.argmax(logits))
            ids.append(token)
            logprobs.append(float(scores[token]))
    return ids[len(prompt) :], logprobs


_GGUF_NAMES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}  # fmt: skip


def write_gguf_lora(peft_dir: Path, model_dir: Path, out_file: Path) -> Path:
    """A PEFT adapter as llama.cpp's convert_lora_to_gguf.py writes it: llama.cpp's tensor
    names, lora_a [rank, in] and lora_b [out, rank] as PEFT has them, q/k lora_b rows in
    Meta's interleaved RoPE order (permuted as the converter permutes the base's), alpha in
    adapter.lora.alpha; float32."""
    import json
    import re

    from gguf import GGUFWriter
    from safetensors.torch import load_file

    from worker.hf_layout import rotate_half_to_interleaved

    config = json.loads((model_dir / "config.json").read_text())
    alpha = json.loads((peft_dir / "adapter_config.json").read_text())["lora_alpha"]
    writer = GGUFWriter(str(out_file), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(alpha))
    pattern = re.compile(r".*layers\.(\d+)\.\w+\.(\w+)\.lora_([AB])\.weight")
    for name, tensor in sorted(load_file(str(peft_dir / "adapter_model.safetensors")).items()):
        layer, module, part = pattern.fullmatch(name).groups()
        if part == "B" and module in ("q_proj", "k_proj"):
            key = "num_attention_heads" if module == "q_proj" else "num_key_value_heads"
            tensor = rotate_half_to_interleaved(tensor, config[key])
        gguf_name = f"blk.{layer}.{_GGUF_NAMES[module]}.weight.lora_{part.lower()}"
        writer.add_tensor(gguf_name, tensor.float().contiguous().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def random_prompts(seed: int, count: int) -> list[list[int]]:
    """`count` prompts of 4-41 ids below 512 (the test models' vocabulary), BOS first."""
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 512) for _ in range(rng.randint(3, 40))] for _ in range(count)]
