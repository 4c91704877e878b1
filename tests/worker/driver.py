"""Models on disk and a minimal stand-in for the scheduler, to drive a real worker in tests.

The driver holds the bookkeeping the real scheduler holds (tokens, computed counts, block
tables) and speaks the step contract: a request's prompt and blocks cross once, afterwards
only the fed-back token and new blocks.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from contract.sampling import SamplingParams
from contract.step import NewRequest, PromptLogprobs, RunningRequest, StepInput, StepOutput, Worker
from worker import create_worker
from worker.random_model import random_weights, write_meta_model
from worker.step_batch import RequestState

GREEDY = SamplingParams(temperature=0.0)
# Echo makes the batch compute logits at every position of a chunk, not only the last.
ALL_ROWS = SamplingParams(temperature=0.0, echo=True)


@dataclass(slots=True)
class ModelFiles:
    model_dir: Path
    params: dict
    weights: dict[str, torch.Tensor]  # float32, Meta names


def read_meta_model(model_dir: Path) -> ModelFiles:
    params = json.loads((model_dir / "params.json").read_text())
    weights = torch.load(model_dir / "consolidated.00.pth", map_location="cpu", weights_only=True)
    return ModelFiles(model_dir, params, weights)


def make_random_model(
    out_dir: Path, *, n_heads: int, n_kv_heads: int, dim: int = 64, seed: int = 0
) -> ModelFiles:
    """A tiny random-weight Llama (2 layers, vocab 256) in Meta's layout."""
    params = {
        "dim": dim,
        "n_layers": 2,
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "vocab_size": 256,
        "multiple_of": 16,
        "ffn_dim_multiplier": None,
        "norm_eps": 1e-5,
        "max_seq_len": 512,
        "rope_theta": 10000.0,
    }
    weights = random_weights(params, seed)
    write_meta_model(out_dir, params, weights)
    return ModelFiles(out_dir, params, weights)


def start_worker(model_dir: Path, **config: object) -> Worker:
    config.setdefault("num_kv_blocks", 256)
    return create_worker(model=str(model_dir), **config)


@dataclass(slots=True)
class Seq:
    req_id: str
    token_ids: list[int]
    options: SamplingParams
    max_new_tokens: int
    num_computed: int = 0
    block_ids: list[int] = field(default_factory=list)
    on_worker: bool = False
    unsent_tokens: list[int] = field(default_factory=list)
    unsent_blocks: list[int] = field(default_factory=list)
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: dict[int, float] = field(default_factory=dict)  # position -> logprob
    prompt_top_logprobs: dict[int, list[tuple[int, float]]] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return len(self.output_ids) >= self.max_new_tokens


class Driver:
    """Feeds a worker steps; blocks come from a shuffled free list, so tables are scattered."""

    def __init__(self, worker: Worker, rng: random.Random | None = None) -> None:
        self.worker = worker
        info = worker.info()
        self.block_size = info.block_size
        self.free_blocks = list(range(info.num_kv_blocks))
        self.rng = rng or random.Random(0)
        self.rng.shuffle(self.free_blocks)
        self.seqs: dict[str, Seq] = {}
        self.finished_req_ids: list[str] = []  # sent with the next step

    def add(
        self, req_id: str, prompt: list[int], options: SamplingParams, max_new_tokens: int
    ) -> Seq:
        seq = Seq(req_id, list(prompt), options, max_new_tokens)
        self.seqs[req_id] = seq
        return seq

    def reuse_blocks(self, seq: Seq, cached_block_ids: list[int]) -> None:
        """A prefix-cache hit: `seq` starts with full blocks that already hold its K/V."""
        seq.block_ids = list(cached_block_ids)
        seq.num_computed = len(cached_block_ids) * self.block_size
        self.free_blocks = [b for b in self.free_blocks if b not in cached_block_ids]

    def step(self, chunk_of: Callable[[Seq], int] = lambda seq: 1 << 30) -> StepOutput:
        """Schedule every unfinished request; a prefill gets `chunk_of(seq)` tokens at most."""
        step = StepInput(finished_req_ids=self.finished_req_ids)
        self.finished_req_ids = []
        for seq in self.seqs.values():
            if seq.done:
                continue
            num_tokens = min(chunk_of(seq), len(seq.token_ids) - seq.num_computed)
            needed = -(-(seq.num_computed + num_tokens) // self.block_size) - len(seq.block_ids)
            new_blocks = [self.free_blocks.pop() for _ in range(max(needed, 0))]
            seq.block_ids += new_blocks
            if seq.on_worker:
                step.running.append(
                    RunningRequest(seq.req_id, seq.unsent_tokens, seq.unsent_blocks + new_blocks)
                )
            else:
                step.new.append(
                    NewRequest(
                        seq.req_id,
                        list(seq.token_ids),
                        list(seq.block_ids),
                        seq.options,
                        seq.num_computed,
                        num_output_tokens=len(seq.output_ids),
                    )  # fmt: skip
                )
                seq.on_worker = True
            seq.unsent_tokens, seq.unsent_blocks = [], []
            step.num_scheduled_tokens[seq.req_id] = num_tokens
        out = self.worker.execute(step)
        self._record(step, out)
        return out

    def _record(self, step: StepInput, out: StepOutput) -> None:
        assert out.req_ids == list(step.num_scheduled_tokens)
        for i, req_id in enumerate(out.req_ids):
            seq = self.seqs[req_id]
            seq.num_computed += step.num_scheduled_tokens[req_id]
            if req_id in out.prompt_logprobs:
                self._record_prompt(seq, out.prompt_logprobs[req_id])
            if not out.sampled_token_ids[i]:
                assert seq.num_computed < len(seq.token_ids)
                continue
            [token] = out.sampled_token_ids[i]
            seq.token_ids.append(token)
            seq.unsent_tokens.append(token)
            seq.output_ids.append(token)
            seq.logprobs += out.logprobs[i]
            seq.top_logprobs += out.top_logprobs[i]
            if seq.done:
                self.free_blocks += seq.block_ids
                self.finished_req_ids.append(req_id)

    @staticmethod
    def _record_prompt(seq: Seq, prompt: PromptLogprobs) -> None:
        for offset, logprob in enumerate(prompt.logprobs):
            seq.prompt_logprobs[prompt.start_position + offset] = logprob
            if prompt.top_logprobs is not None:
                seq.prompt_top_logprobs[prompt.start_position + offset] = prompt.top_logprobs[
                    offset
                ]

    def run(self, chunk_of: Callable[[Seq], int] = lambda seq: 1 << 30) -> None:
        while not all(seq.done for seq in self.seqs.values()):
            self.step(chunk_of)
        self.finish()

    def finish(self) -> None:
        """Have the worker drop the finished requests, as the scheduler does."""
        self.worker.execute(StepInput(finished_req_ids=self.finished_req_ids))
        self.finished_req_ids = []

    def preempt(self, req_id: str) -> None:
        """Drop a request's cache as the scheduler does (recompute, not swap)."""
        seq = self.seqs[req_id]
        self.worker.execute(StepInput(finished_req_ids=[req_id]))
        self.free_blocks += seq.block_ids
        seq.block_ids, seq.num_computed, seq.on_worker = [], 0, False
        seq.unsent_tokens, seq.unsent_blocks = [], []


def generate_alone(
    worker: Worker, prompt: list[int], options: SamplingParams, max_new_tokens: int
) -> Seq:
    driver = Driver(worker)
    seq = driver.add("alone", prompt, options, max_new_tokens)
    driver.run()
    return seq


def all_position_logits(
    worker: Worker, token_ids: list[int], chunk: int | None = None
) -> torch.Tensor:
    """Logits [len(token_ids), vocab] from prefilling the worker's model and cache with
    token_ids: in one step, or in steps of `chunk` tokens (decode-sized rows)."""
    block_size = worker.info().block_size
    blocks = list(range(-(-len(token_ids) // block_size)))
    state = RequestState(
        "probe",
        list(token_ids),
        blocks,
        ALL_ROWS,
        num_computed=0,
        num_prompt_tokens=len(token_ids),
    )
    step = chunk or len(token_ids)
    parts = []
    with torch.inference_mode():
        while state.num_computed < len(token_ids):
            n = min(step, len(token_ids) - state.num_computed)
            batch = worker.build_batch([(state, n)])
            hidden = worker.model(
                batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn
            )
            parts.append(worker.model.compute_logits(hidden, batch.logits_rows))
            state.num_computed += n
    return torch.cat(parts)


def assert_same_model_logits(actual: torch.Tensor, expected: torch.Tensor, n_layers: int) -> None:
    """Two float32 runs of the same weights through different code paths (another loader, a
    tied head, another GEMM layout) sum in different orders, so they agree only to float32
    reassociation: each of a layer's reductions (the attention and MLP projections, the
    attention itself, the norms) may move a value by a few ulps of its magnitude, and the
    error adds up over the layers and the LM head. The bound is one ulp of the largest logit
    per reduction on the path, far below any real difference (a wrong weight moves logits
    by tenths)."""
    reductions_per_layer = 8  # wqkv, attention scores, attention values, wo, w13, w2, 2 norms
    num_reductions = reductions_per_layer * n_layers + 2  # the final norm, the LM head
    ulp = torch.finfo(torch.float32).eps * expected.abs().max().item()
    difference = (actual - expected).abs().max().item()
    assert difference <= num_reductions * ulp, (
        f"logits differ by {difference:.3g}, more than float32 reassociation allows "
        f"({num_reductions} reductions x {ulp:.3g})"
    )
