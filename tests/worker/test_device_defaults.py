"""What the worker chooses by device: bfloat16 on CUDA, logprobs in float32 whatever the
model's dtype, graphs only where they can run, and a KV cache sized after the allocator hands
back what it caches."""

from __future__ import annotations

import torch

from common.flags import settings_from_args
from contract.sampling import SamplingParams
from frontend.cli import build_parser
from frontend.config import ServeConfig
from tests.worker.driver import Driver, all_position_logits, start_worker
from worker.kv_cache import CUDA_FREE_MEMORY_FRACTION, blocks_for_budget, bytes_per_block
from worker.model_args import args_from_meta_params
from worker.runner import resolve_dtype

CUDA = torch.device("cuda")


def test_bfloat16_is_the_default_on_cuda_and_the_others_stay_selectable() -> None:
    assert resolve_dtype(None, CUDA) is torch.bfloat16
    assert resolve_dtype(None, torch.device("cpu")) is torch.float32
    assert resolve_dtype("float16", CUDA) is torch.float16
    assert resolve_dtype("float32", CUDA) is torch.float32


def test_a_bfloat16_model_reports_float32_logprobs(stories_dir) -> None:
    worker = start_worker(stories_dir, device="cpu", dtype="bfloat16")
    prompt = [1, 403, 407, 261]
    driver = Driver(worker)
    seq = driver.add("r", prompt, SamplingParams(temperature=0.0, logprobs=True), 4)
    driver.run()
    logits = all_position_logits(worker, prompt + seq.output_ids[:-1])
    assert logits.dtype == torch.float32
    expected = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 :]
    expected = expected.gather(1, torch.tensor(seq.output_ids)[:, None]).squeeze(1).tolist()
    assert seq.logprobs == expected
    # A logprob of bfloat16 precision would survive a round trip through bfloat16 unchanged.
    assert any(torch.tensor(lp).bfloat16().item() != lp for lp in seq.logprobs)


def test_enforce_eager_is_a_serve_flag_and_graphs_stay_off_on_the_cpu(stories_dir) -> None:
    args = build_parser().parse_args(["serve", "--enforce-eager"])
    assert settings_from_args(ServeConfig, args).engine.model.enforce_eager is True
    assert ServeConfig().engine.model.enforce_eager is False
    assert start_worker(stories_dir, device="cpu").decode_graphs is None


def test_the_kv_cache_is_sized_after_the_allocator_hands_back_what_it_caches(monkeypatch) -> None:
    # The GPU's two calls stand in for a GPU: the allocator still caches 9 GB that no tensor
    # holds (a 7B model's unfused projections, dropped after the load) until empty_cache().
    cached = {"bytes": 9 << 30}
    calls = []

    def empty_cache() -> None:
        calls.append("empty_cache")
        cached["bytes"] = 0

    def mem_get_info(device) -> tuple[int, int]:
        calls.append("mem_get_info")
        return (20 << 30) - cached["bytes"], 80 << 30

    monkeypatch.setattr(torch.cuda, "empty_cache", empty_cache)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    args = args_from_meta_params(
        {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 32, "vocab_size": 32000,
         "multiple_of": 256, "norm_eps": 1e-5, "max_seq_len": 4096}, 32000,
    )  # fmt: skip
    blocks = blocks_for_budget(args, 16, torch.bfloat16, CUDA, None)
    assert calls == ["empty_cache", "mem_get_info"]
    per_block = bytes_per_block(args, 16, torch.bfloat16)  # 8 MiB for Llama-2-7B
    assert blocks == int((20 << 30) * CUDA_FREE_MEMORY_FRACTION) // per_block
