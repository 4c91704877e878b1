"""The CPU attention candidates on one step's attention, before choosing one.

    python -m bench.bench_attention_candidates            # writes its BENCHMARKS.md section
    python -m bench.bench_attention_candidates --no-write

One layer of the 60M model's attention (8 query heads, 4 KV heads, head_dim 64) for the step
of bench_paged_attention: 32 decodes with contexts from 100-500 and a 256-token prefill chunk
after 256 cached tokens, blocks of 16 shuffled over the pool. Candidates:

- torch reference: gather each sequence's blocks into a buffer, pad decodes to the longest,
  one SDPA call for the decodes and one per prefill chunk (worker/attention/torch_backend.py);
- C++ kernel: reads the blocks in place, every sequence in one call (worker/csrc);
- FlexAttention under torch.compile: the whole cache as one key sequence per KV head, a
  mask that lets each query see only its own sequence's slots up to its position, and a
  block mask with the cache's block size so other sequences' blocks are skipped.

Each writes the step's K/V too, except FlexAttention (its cache is filled beforehand), so the
comparison slightly favours it. All must agree with the reference.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import torch

from bench.common import markdown_table, run_header, timed, write_section
from contract.step import SamplingOptions
from worker.attention.cpu_backend import CpuAttentionBackend
from worker.attention.torch_backend import TorchAttentionBackend
from worker.step_batch import RequestState, build_step_batch

SECTION = "Worker: CPU attention candidates"
H, KVH, D, BS = 8, 4, 64, 16
CPU = torch.device("cpu")


def make_step(seed: int) -> tuple[list[tuple[RequestState, int]], int]:
    rng = random.Random(seed)
    lengths = [rng.randint(100, 500) for _ in range(32)] + [512]
    cached = [n - 1 for n in lengths[:-1]] + [256]
    num_blocks = sum(-(-n // BS) for n in lengths)
    pool = list(range(num_blocks))
    rng.shuffle(pool)
    scheduled = []
    for i, (n, c) in enumerate(zip(lengths, cached, strict=True)):
        blocks, pool = pool[: -(-n // BS)], pool[-(-n // BS) :]
        state = RequestState(f"s{i}", [0] * n, blocks, SamplingOptions(), c, n)
        scheduled.append((state, n - c))
    return scheduled, num_blocks


def fill(backend, scheduled, num_blocks: int, truth: dict[str, torch.Tensor]):
    """The backend's cache holding every sequence's cached K/V (`truth`, per slot)."""
    k_shape, v_shape = backend.kv_cache_shapes(num_blocks, BS, KVH, D)
    k_cache, v_cache = torch.zeros(k_shape), torch.zeros(v_shape)
    prefix = [
        (RequestState(st.req_id, st.token_ids, st.block_ids, st.sampling, 0, len(st.token_ids)),
         st.num_computed)
        for st, _ in scheduled
    ]  # fmt: skip
    batch = build_step_batch(prefix, BS, CPU, backend)
    slots = batch.attn.slot_mapping
    q = torch.zeros(len(slots), H, D)
    backend.forward(q, truth["k"][slots], truth["v"][slots], k_cache, v_cache, batch.attn)
    return k_cache, v_cache


class FlexCandidate:
    """FlexAttention over the cache as one long key sequence per KV head."""

    def __init__(self, scheduled, num_blocks: int, truth: dict[str, torch.Tensor]) -> None:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        num_slots = num_blocks * BS
        slot_seq = torch.full((num_slots,), -1)
        slot_pos = torch.zeros(num_slots, dtype=torch.long)
        q_seq, q_pos = [], []
        for s, (st, n) in enumerate(sorted(scheduled, key=lambda e: e[1] != 1)):
            for p in range(len(st.token_ids)):
                slot = st.block_ids[p // BS] * BS + p % BS
                slot_seq[slot], slot_pos[slot] = s, p
            q_seq += [s] * n
            q_pos += range(st.num_computed, st.num_computed + n)
        q_seq_t, q_pos_t = torch.tensor(q_seq), torch.tensor(q_pos)

        def mask_mod(b, h, q_idx, kv_idx):
            return (slot_seq[kv_idx] == q_seq_t[q_idx]) & (slot_pos[kv_idx] <= q_pos_t[q_idx])

        started = time.perf_counter()
        self.block_mask = create_block_mask(
            mask_mod, None, None, len(q_seq), num_slots, device="cpu", BLOCK_SIZE=(16, BS)
        )
        self.mask_seconds = time.perf_counter() - started
        # [slots, kv, d] -> [1, kv, slots, d], head-major as the kernel reads it
        self.k = truth["k"].permute(1, 0, 2).unsqueeze(0).contiguous()
        self.v = truth["v"].permute(1, 0, 2).unsqueeze(0).contiguous()
        self.attend = torch.compile(flex_attention)
        started = time.perf_counter()
        self.forward(torch.zeros(len(q_seq), H, D))
        self.compile_seconds = time.perf_counter() - started

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        # [T, H, d] -> [1, H, T, d] and back
        out = self.attend(q.transpose(0, 1).unsqueeze(0), self.k, self.v,
                          block_mask=self.block_mask, enable_gqa=True)  # fmt: skip
        return out.squeeze(0).transpose(0, 1).reshape(q.shape[0], H * D)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-flex", action="store_true", help="leave FlexAttention out")
    p.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md")
    args = p.parse_args()
    scheduled, num_blocks = make_step(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    truth = {
        "k": torch.randn(num_blocks * BS, KVH, D, generator=gen),
        "v": torch.randn(num_blocks * BS, KVH, D, generator=gen),
    }
    num_tokens = sum(n for _, n in scheduled)
    q = torch.randn(num_tokens, H, D, generator=gen)
    calls = {}
    for backend in (TorchAttentionBackend(BS), CpuAttentionBackend(BS)):
        k_cache, v_cache = fill(backend, scheduled, num_blocks, truth)
        batch = build_step_batch(scheduled, BS, CPU, backend)
        slots = batch.attn.slot_mapping
        k_new, v_new = truth["k"][slots], truth["v"][slots]
        calls[backend.name] = (lambda b=backend, kc=k_cache, vc=v_cache, m=batch.attn, k=k_new,
                               v=v_new: b.forward(q, k, v, kc, vc, m))  # fmt: skip
    notes = []
    if not args.skip_flex:
        # The step's own K/V, already in the truth tensors, so the cache is complete.
        flex = FlexCandidate(scheduled, num_blocks, truth)
        calls["flex"] = lambda: flex.forward(q)
        notes.append(
            f"FlexAttention: torch.compile took {flex.compile_seconds:.1f} s for this one "
            f"shape (each new number of query tokens compiles again) and building the block "
            f"mask {flex.mask_seconds * 1e3:.1f} ms per step."
        )
    with torch.inference_mode():
        reference = calls["torch"]()
        outputs = {name: call() for name, call in calls.items()}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                times[name].append(timed(call)[0])
    labels = {"torch": "torch reference (gather + SDPA)", "cpu": "C++ kernel (in place)",
              "flex": "FlexAttention, torch.compile"}  # fmt: skip
    base = statistics.median(times["torch"])
    rows = [
        [labels[name], statistics.median(ts) * 1e3, min(ts) * 1e3, base / statistics.median(ts),
         f"{(outputs[name] - reference).abs().max().item():.1e}"]
        for name, ts in times.items()
    ]  # fmt: skip
    for row in rows:
        print(row, file=sys.stderr)
    header = ["candidate", "ms, median", "ms, min", "speed-up vs reference", "max |difference|"]
    body = (
        f"{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n\n"
        f"{run_header('cpu')}\n{markdown_table(header, rows)}\n\n" + "\n".join(notes) + "\n"
    )
    print(body)
    if not args.no_write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
