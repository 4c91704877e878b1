"""A step's results come back from the device in one copy, exactly as they were."""

from __future__ import annotations

import torch

from worker.device_io import packed_host_lists, to_device, to_host_lists


def test_one_packed_copy_gives_back_every_value_and_kind() -> None:
    gen = torch.Generator().manual_seed(0)
    tokens = torch.tensor([0, 31999, 2**40 + 3])  # int64, up to well past any vocabulary
    logprobs = -torch.rand(3, generator=gen) * 30  # float32 with every mantissa bit in use
    top_ids = torch.randint(0, 32000, (3, 4), generator=gen)
    top_logprobs = -torch.rand(3, 4, generator=gen)
    no_top = torch.empty(3, 0, dtype=torch.long)  # top_logprobs 0: nothing per row
    tensors = (tokens, logprobs, top_ids, top_logprobs, no_top)
    packed = packed_host_lists(tensors)
    assert packed == [t.tolist() for t in tensors]
    assert all(type(x) is int for x in packed[0]) and all(type(x) is float for x in packed[1])
    assert packed[4] == [[], [], []]
    assert to_host_lists(*tensors) == packed  # on the CPU: plain tolist, the same lists


def test_lists_reach_the_device_with_the_dtype_asked() -> None:
    moved = to_device(range(3), torch.int32, torch.device("cpu"))
    assert moved.dtype == torch.int32 and moved.tolist() == [0, 1, 2]
