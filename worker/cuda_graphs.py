"""CUDA graphs for decode-only steps: captured once per batch size, replayed every step.

A decode step on a GPU is short enough that launching its few hundred kernels from Python
can take as long as running them. So at start the worker captures the
forward pass (and the logits) of a decode step for a ladder of batch sizes (1, 2, 4, 8, 16,
then every 16 up to max_num_seqs) and from then on replays the graph of the next size up:
the step's token ids, positions, slots, context lengths and block tables are written into
pinned host buffers and copied, without waiting, into persistent device buffers that every
graph reads. Rows past the real batch are padding: slot -1 (written nowhere) and context
length 0 (attends to nothing). Steps with a prefill chunk run eagerly.

Where the adapters run on the Triton path (worker/lora_triton.py: CUDA), a second ladder is
captured with the adapter kernels in it, reading each row's adapter slot from one more
persistent buffer (-1: the base model; padding rows too) and A/B from the fixed slot buffers
of worker/lora_slots.py; decode steps with adapters replay it, steps without replay the
first, which has no adapter launches. Capture takes twice as long then.

Only a backend whose kernels take every length from device tensors can be captured (the
`triton` backend says so with `supports_cuda_graphs`). `--enforce-eager` turns graphs off, and
so does tensor parallelism (its collectives inside a captured graph are not yet verified on
several GPUs). A rank other than 0 captures no logits (its model returns None): its replays
give None, and it samples nothing.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import torch

from worker.attention import AttentionMetadata
from worker.attention.backend import AttentionBackend
from worker.device_io import to_device
from worker.kv_cache import KVCache
from worker.lora_slots import LoraSlots
from worker.lora_triton import TritonLoraStep
from worker.model import Transformer
from worker.step_batch import RequestState, StepBatch, _logits_plans

log = logging.getLogger("loom.worker")

# The ladder's top when the worker is not told the scheduler's max_num_seqs (its default).
DEFAULT_MAX_NUM_SEQS = 256

Scheduled = list[tuple[RequestState, int]]


def capture_sizes(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, 16, then steps of 16, up to and including max_num_seqs."""
    ladder = [1, 2, 4, 8, *range(16, max_num_seqs, 16)]
    return [size for size in ladder if size < max_num_seqs] + [max_num_seqs]


def padded_size(num_seqs: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds `num_seqs` rows; None when none does."""
    index = bisect.bisect_left(sizes, num_seqs)
    return sizes[index] if index < len(sizes) else None


def replay_size(scheduled: Scheduled, sizes: list[int]) -> int | None:
    """The captured size a step replays, or None when it runs eagerly."""
    if any(num_tokens != 1 for _, num_tokens in scheduled):
        return None  # a prefill chunk: the graphs hold one token per sequence
    return padded_size(len(scheduled), sizes)


class DecodeInputs:
    """The persistent device inputs every captured graph reads, and their host staging.

    Two flat buffers per side, so that filling a step costs two copies: int64 token ids,
    positions, KV slots and adapter slots; int32 context lengths followed by the block
    tables. The host side
    is pinned on CUDA. It is rewritten only at the next step, after the previous step's
    results came back, so no copy that reads it can still be queued.
    """

    def __init__(self, max_batch: int, max_blocks_per_seq: int, device: torch.device) -> None:
        self.max_batch = max_batch
        self.max_blocks_per_seq = max_blocks_per_seq
        pinned = device.type == "cuda"
        self.host_long = torch.zeros((4, max_batch), dtype=torch.int64, pin_memory=pinned)
        self.host_long[2:] = -1  # slots: padding until a step fills them
        ints = max_batch * (1 + max_blocks_per_seq)
        self.host_int = torch.zeros(ints, dtype=torch.int32, pin_memory=pinned)
        self.device_long = self.host_long.to(device)
        self.device_int = self.host_int.to(device)
        self.input_ids, self.positions, self.slot_mapping, self.lora_slots = self.device_long
        self.seq_lens = self.device_int[:max_batch]
        # [max_batch, max_blocks_per_seq]: row b holds the block ids of sequence b
        self.block_tables = self.device_int[max_batch:].view(max_batch, max_blocks_per_seq)
        # Every row is a one-token sequence: sequence b owns row b.
        self.query_start_loc = torch.arange(max_batch + 1, dtype=torch.int32, device=device)
        # numpy views of the staging, for cheap element writes from Python lists
        self._long = self.host_long.numpy()
        self._lens = self.host_int[:max_batch].numpy()
        self._tables = self.host_int[max_batch:].view(max_batch, max_blocks_per_seq).numpy()

    def fill(
        self,
        scheduled: Scheduled,
        batch_size: int,
        block_size: int,
        slot_of: dict[int, int] | None = None,
    ) -> None:
        """Stage one decode step padded to `batch_size` rows and queue its copies;
        `slot_of`: each adapter's slot (lora_id -> slot), for a step with adapters."""
        num_seqs = len(scheduled)
        ids, positions, slots, lora_slots = self._long
        states = [state for state, _ in scheduled]
        computed = [state.num_computed for state in states]  # the position of each new token
        ids[:num_seqs] = [s.token_ids[p] for s, p in zip(states, computed, strict=True)]
        positions[:num_seqs] = computed
        # block_table [7, 2], block_size 16, position 20 -> slot 2 * 16 + 4 = 36
        slots[:num_seqs] = [
            s.block_ids[p // block_size] * block_size + p % block_size
            for s, p in zip(states, computed, strict=True)
        ]
        self._lens[:num_seqs] = [p + 1 for p in computed]
        lora_slots[:batch_size] = -1
        if slot_of is not None:
            lora_slots[:num_seqs] = [-1 if s.lora is None else slot_of[s.lora.lora_id]
                                     for s in states]  # fmt: skip
        for row, (state, p) in enumerate(zip(states, computed, strict=True)):
            num_blocks = p // block_size + 1
            self._tables[row, :num_blocks] = state.block_ids[:num_blocks]
        # Padding rows: token 0 at position 0, written nowhere, attending to nothing.
        ids[num_seqs:batch_size] = 0
        positions[num_seqs:batch_size] = 0
        slots[num_seqs:batch_size] = -1
        self._lens[num_seqs:batch_size] = 0
        self.device_long.copy_(self.host_long, non_blocking=True)
        used = self.max_batch + batch_size * self.max_blocks_per_seq
        self.device_int[:used].copy_(self.host_int[:used], non_blocking=True)

    def metadata(self, batch_size: int, max_seq_len: int, backend: AttentionBackend):
        """The attention metadata of a `batch_size` decode step, as views of the buffers."""
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:batch_size],
            num_decodes=batch_size,
            query_start_loc=self.query_start_loc[: batch_size + 1],
            seq_lens=self.seq_lens[:batch_size],
            block_tables=self.block_tables[:batch_size],
            max_query_len=1,
            max_seq_len=max_seq_len,
            query_start_loc_host=list(range(batch_size + 1)),
            seq_lens_host=[max_seq_len] * batch_size,  # bounds only: a graph outlives a step
            backend=backend,
        )


class CapturedStep(Protocol):
    def replay(self) -> torch.Tensor | None:
        """Run the captured forward on the buffers as they are now; its logits (None on a
        tensor-parallel rank other than 0)."""


Capture = Callable[[Callable[[], torch.Tensor | None]], CapturedStep]


class CudaGraphStep:
    def __init__(self, forward: Callable[[], torch.Tensor | None], pool: object) -> None:
        forward()  # once outside the capture: kernels compile, cuBLAS sets up its workspace
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):
            self.logits = forward()

    def replay(self) -> torch.Tensor | None:
        self.graph.replay()
        return self.logits  # overwritten in place by each replay


def cuda_graph_capture() -> Capture:
    pool = torch.cuda.graph_pool_handle()  # one pool: the graphs never run at once
    return lambda forward: CudaGraphStep(forward, pool)


class DecodeGraphs:
    """Decides which steps replay a graph, fills the buffers and replays it."""

    def __init__(
        self,
        model: Transformer,
        kv_cache: KVCache,
        backend: AttentionBackend,
        max_num_seqs: int,
        device: torch.device,
        capture: Capture,
        lora_slots: LoraSlots | None = None,
    ) -> None:
        """`lora_slots`: the Triton adapter path's slots; with them the adapted ladder is
        captured too."""
        self.model = model
        self.kv_cache = kv_cache
        self.backend = backend
        self.block_size = kv_cache.block_size
        self.max_seq_len = model.args.max_seq_len
        self.sizes = capture_sizes(max_num_seqs)
        max_blocks = -(-self.max_seq_len // self.block_size)
        self.inputs = DecodeInputs(self.sizes[-1], max_blocks, device)
        self.num_replays: Counter[int] = Counter()  # by captured size
        self.num_adapted_replays = 0  # of those, replays of the ladder with adapters
        self._all_rows = torch.arange(self.sizes[-1], device=device)
        self._metadata = {
            size: self.inputs.metadata(size, self.max_seq_len, backend) for size in self.sizes
        }
        self._steps: dict[int, CapturedStep] = {}
        self._adapted_steps: dict[int, CapturedStep] = {}  # with lora_slots only
        with torch.inference_mode():
            # Largest first: the smaller graphs then fit in the memory the largest reserved.
            for size in reversed(self.sizes):
                self._steps[size] = capture(self._forward_of(size, None))
            for size in reversed(self.sizes if lora_slots is not None else []):
                lora = TritonLoraStep(lora_slots, self.inputs.lora_slots[:size])
                self._adapted_steps[size] = capture(self._forward_of(size, lora))

    def _forward_of(
        self, size: int, lora: TritonLoraStep | None
    ) -> Callable[[], torch.Tensor | None]:
        meta = self._metadata[size]
        self.backend.prepare(meta)
        input_ids, positions = self.inputs.input_ids[:size], self.inputs.positions[:size]

        def forward() -> torch.Tensor | None:  # [size, vocab_size] float32
            hidden = self.model(input_ids, positions, self.kv_cache.layers, meta, lora)
            return self.model.compute_logits(hidden, None)

        return forward

    def run(
        self, scheduled: Scheduled, loras: Any = None, adapted: bool = False
    ) -> tuple[StepBatch, torch.Tensor | None] | None:
        """Replay the step: its batch (for sampling) and the logits rows it needs (None on a
        rank that gets no logits); None when the step must run eagerly. `adapted`: the step
        has adapters, resident in `loras` (worker/lora_batch.py's ResidentLoras)."""
        size = replay_size(scheduled, self.sizes)
        if size is None or (adapted and not self._adapted_steps):
            return None
        num_seqs = len(scheduled)
        self.inputs.fill(scheduled, size, self.block_size, loras.slot_of if adapted else None)
        logits = (self._adapted_steps if adapted else self._steps)[size].replay()
        self.num_replays[size] += 1
        self.num_adapted_replays += adapted
        # A decode step's sequences are already in batch order: sequence b is row b.
        order = list(range(num_seqs))
        rows, plans = _logits_plans(scheduled, order, order)
        if logits is None or rows == order:
            logits_rows = self._all_rows[:num_seqs]
            logits = None if logits is None else logits[:num_seqs]
        else:  # some rows finish a prompt mid-way and need no logits
            logits_rows = to_device(rows, torch.long, logits.device)
            logits = logits.index_select(0, logits_rows)
        batch = StepBatch(
            input_ids=self.inputs.input_ids[:size],
            positions=self.inputs.positions[:size],
            attn=self._metadata[size],
            logits_rows=logits_rows,
            plans=plans,
        )
        return batch, logits


def capture_decode_graphs(
    model: Transformer,
    kv_cache: KVCache,
    backend: AttentionBackend,
    device: torch.device,
    max_num_seqs: int | None,
    enforce_eager: bool,
    tensor_parallel_size: int = 1,
    lora_slots: LoraSlots | None = None,
) -> DecodeGraphs | None:
    """The worker's decode graphs, or None where steps run eagerly (and why, in the log)."""
    if device.type != "cuda":
        return None
    if tensor_parallel_size > 1:
        log.info(
            "CUDA graphs off under tensor parallelism (size %d): collectives inside captured "
            "graphs are not yet verified on several GPUs; every step runs eagerly",
            tensor_parallel_size,
        )
        return None
    if enforce_eager:
        log.info("CUDA graphs off (enforce_eager): every step runs eagerly")
        return None
    if not getattr(backend, "supports_cuda_graphs", False):
        log.info("CUDA graphs off: the %s attention backend cannot be captured", backend.name)
        return None
    started = time.monotonic()
    graphs = DecodeGraphs(
        model, kv_cache, backend, max_num_seqs or DEFAULT_MAX_NUM_SEQS, device,
        cuda_graph_capture(), lora_slots,
    )  # fmt: skip
    log.info(
        "captured %d decode CUDA graphs (batch sizes %s%s) in %.1f s",
        len(graphs.sizes) * (1 if lora_slots is None else 2),
        ", ".join(map(str, graphs.sizes)),
        "" if lora_slots is None else "; each without and with LoRA adapters",
        time.monotonic() - started,
    )
    return graphs
