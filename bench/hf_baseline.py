"""Hugging Face transformers `generate()` with static batches: the other baseline."""

from __future__ import annotations

from pathlib import Path

import torch


def load_hf_model(hf_dir: Path, device: str = "cpu"):
    try:
        from transformers import LlamaForCausalLM
    except ImportError as e:
        raise SystemExit("this benchmark needs transformers: pip install 'loom[bench]'") from e
    model = LlamaForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    model.generation_config.eos_token_id = None  # every request runs to its max_tokens
    model.generation_config.pad_token_id = 0
    return model.to(device).eval()


@torch.inference_mode()
def hf_generate_batch(model, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    """Greedy; left-padded to the longest prompt and run to the longest max_tokens, as a
    static batch must; each request keeps its first max_tokens[i] tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    num_new = max(max_tokens)
    out = model.generate(
        input_ids=ids.to(model.device),
        attention_mask=attention_mask.to(model.device),
        max_new_tokens=num_new,
        min_new_tokens=num_new,
        do_sample=False,
    )
    generated = out[:, width:].tolist()
    return [row[:n] for row, n in zip(generated, max_tokens, strict=True)]


def hf_static_batches(
    model, prompts: list[list[int]], max_tokens: list[int], batch_size: int
) -> list[list[int]]:
    outputs: list[list[int]] = []
    for first in range(0, len(prompts), batch_size):
        batch = slice(first, first + batch_size)
        outputs += hf_generate_batch(model, prompts[batch], max_tokens[batch])
    return outputs


@torch.inference_mode()
def hf_last_logits(model, prompt: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([prompt], device=model.device)).logits[0, -1].float()
