"""The fused CPU decode step (worker/decode_step.py) against the per-operator path it
replaces and against the float64 dense oracle: packed GGUF models of every block type (float
activations; int16 and int8 ones within their error), a float32 model and its bfloat16 weights
(`--quantization bf16`), several sequences of different lengths in one step, contexts that
cross KV blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.models.gguf_writer import GGUFOptions, write_stories_gguf
from tests.models.test_packed_gguf import TYPES, make_packable_model, write_model
from tests.worker.dense_reference import dense_logits
from tests.worker.driver import (
    ALL_ROWS,
    ModelFiles,
    assert_same_model_logits,
    read_meta_model,
    start_worker,
)
from worker.cpu_kernels import load_cpu_kernels
from worker.decode_step import MAX_FUSED_FLOAT32_ROWS, MAX_FUSED_ROWS, FusedDecode
from worker.loader import load_checkpoint
from worker.model import Linear
from worker.packed_weights import PackedTensor
from worker.random_model import random_weights, write_meta_model
from worker.step_batch import RequestState

pytestmark = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler here")



@pytest.fixture(scope="module")
def random_model(stories_dir) -> ModelFiles:
    return make_packable_model(stories_dir)


PROMPTS = [[(5 * i + 7 * s) % 500 + 1 for i in range(n)] for s, n in enumerate((3, 17, 40))]
NEXT = [11, 260, 499]  # each sequence's decode token


def prefilled(
    worker, block_size: int, prompts: list[list[int]] = PROMPTS, next_ids: list[int] = NEXT
) -> list[RequestState]:
    """`prompts` in the worker's cache through the per-operator path, each with its decode
    token appended (not yet computed)."""
    states, first = [], 0
    for i, prompt in enumerate(prompts):
        blocks = list(range(first, first + len(prompt) // block_size + 1))
        first += len(blocks)
        state = RequestState(f"r{i}", list(prompt), blocks, ALL_ROWS, 0, len(prompt))
        with torch.inference_mode():
            batch = worker.build_batch([(state, len(prompt))])
            worker.model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
        state.num_computed = len(prompt)
        state.token_ids.append(next_ids[i])
        states.append(state)
    return states


@torch.inference_mode()
def decode_both_ways(
    worker, prompts: list[list[int]] = PROMPTS, next_ids: list[int] = NEXT
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step of every sequence: (fused logits, per-operator logits)."""
    states = prefilled(worker, worker.info().block_size, prompts, next_ids)
    batch = worker.build_batch([(state, 1) for state in states])
    assert batch.attn.max_query_len == 1
    hidden = worker.model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
    module = worker.model.compute_logits(hidden, batch.logits_rows)
    fused = worker.fused_decode(batch)  # rewrites the same K/V slots
    return fused, module


def dense_oracle(
    files_weights: dict,
    params: dict,
    prompts: list[list[int]] = PROMPTS,
    next_ids: list[int] = NEXT,
) -> torch.Tensor:
    return torch.stack([
        dense_logits(files_weights, params, prompt + [token])[-1]
        for prompt, token in zip(prompts, next_ids, strict=True)
    ])  # fmt: skip


@pytest.mark.parametrize("type_name", TYPES)
def test_fused_decode_of_packed_weights_equals_the_operator_path(random_model, tmp_path, type_name):
    path = write_model(random_model, tmp_path / "m.gguf", type_name)
    worker = start_worker(path, block_size=16, activations="float")
    assert isinstance(worker.fused_decode, FusedDecode)
    fused, module = decode_both_ways(worker)
    n_layers = random_model.params["n_layers"]
    assert_same_model_logits(fused, module, n_layers)
    # The dequantized weights in float64: float activations leave only float32 rounding.
    floats = load_checkpoint(path, torch.float32, "none").weights
    oracle = dense_oracle(floats, random_model.params)
    assert (fused.double() - oracle).abs().max().item() < 1e-4


def test_bfloat16_weights_decode_fused_as_the_operator_path_and_the_oracle(
    random_model, tmp_path
) -> None:
    path = write_stories_gguf(random_model, tmp_path / "f32.gguf", GGUFOptions())
    worker = start_worker(path, block_size=16, quantization="bf16")  # int16 activations asked
    w13 = worker.model.layers[0].feed_forward.w13
    assert [p.type_name for p in w13.parts] == ["BF16", "BF16"] and w13.activations == "float"
    assert worker.fused_decode.max_rows == MAX_FUSED_ROWS  # the float kernel, as float32's
    fused, module = decode_both_ways(worker)
    assert_same_model_logits(fused, module, random_model.params["n_layers"])
    # The oracle: the weights rounded to bfloat16, in float64, times float64 activations.
    rounded = load_checkpoint(path, torch.float32, "bf16").weights
    assert any(isinstance(w, PackedTensor) for w in rounded.values())
    weights = {n: w.dequantize() if isinstance(w, PackedTensor) else w for n, w in rounded.items()}
    oracle = dense_oracle(weights, random_model.params)
    assert (fused.double() - oracle).abs().max().item() < 1e-4
    unrounded = dense_oracle(load_checkpoint(path, torch.float32, "none").weights,
                             random_model.params)  # fmt: skip
    assert (oracle - unrounded).abs().max().item() > 1e-3  # the rounding is what it serves


def test_fused_decode_of_float32_weights_equals_the_operator_path(stories_dir) -> None:
    worker = start_worker(stories_dir, block_size=16)
    assert isinstance(worker.fused_decode, FusedDecode)
    fused, module = decode_both_ways(worker)
    assert_same_model_logits(fused, module, n_layers=worker.model.args.n_layers)
    files = read_meta_model(stories_dir)
    oracle = dense_oracle(files.weights, files.params)
    assert (fused.double() - oracle).abs().max().item() < 1e-4


@pytest.mark.parametrize("rows", [1, 20])
def test_column_major_float32_weights_summed_by_input_equal_the_oracle(tmp_path, rows) -> None:
    """The fused step sums column-major float32 weights by input, each thread over its share
    of the inputs: an LM head wider than a column tile (5,000 columns; 2,048 a tile at 20
    rows), a down projection of 193 inputs (no multiple of the 4 summed per pass)."""
    params = {
        "dim": 72, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 5000,
        "multiple_of": 1, "ffn_dim_multiplier": 1.01, "norm_eps": 1e-5, "max_seq_len": 256,
        "rope_theta": 10000.0,
    }  # fmt: skip
    weights = random_weights(params, seed=3)
    write_meta_model(tmp_path, params, weights)
    worker = start_worker(tmp_path, block_size=16)
    assert worker.model.args.hidden_dim == 193
    assert worker.fused_decode.max_rows == MAX_FUSED_FLOAT32_ROWS >= rows
    prompts = [[(3 * i + 11 * s) % 4990 + 5 for i in range(2 + s)] for s in range(rows)]
    next_ids = [(97 * s) % 4990 + 5 for s in range(rows)]
    fused, module = decode_both_ways(worker, prompts, next_ids)
    assert_same_model_logits(fused, module, n_layers=2)
    oracle = dense_oracle(weights, params, prompts, next_ids)
    assert (fused.double() - oracle).abs().max().item() < 1e-4


def test_row_major_float32_weights_decode_fused_as_the_operator_path(stories_dir) -> None:
    """Row-major float32 projections (an LM head tied to the embedding stays row-major): a dot
    product per output column, and the narrower step of the row loops."""
    worker = start_worker(stories_dir, block_size=16)
    for module in worker.model.modules():
        if isinstance(module, Linear):
            module.weight = nn.Parameter(module.weight.contiguous(), requires_grad=False)
    worker.fused_decode = FusedDecode.create(
        worker.model, worker.kv_cache, "cpu", torch.device("cpu")
    )
    assert worker.fused_decode.max_rows == MAX_FUSED_ROWS
    fused, module = decode_both_ways(worker)
    assert_same_model_logits(fused, module, n_layers=worker.model.args.n_layers)
    files = read_meta_model(stories_dir)
    oracle = dense_oracle(files.weights, files.params)
    assert (fused.double() - oracle).abs().max().item() < 1e-4


@torch.inference_mode()
def test_sequences_of_several_tokens_run_fused_as_the_operator_path_runs_them(stories_dir) -> None:
    """A verification's 1 + k tokens, a short prefill chunk: one decode row per token, each
    attending over the context up to itself, crossing a block boundary (17 + 3 tokens)."""
    worker = start_worker(stories_dir, block_size=16)
    states = prefilled(worker, 16)
    for state in states:
        state.token_ids += [42, 7]  # 3 uncomputed tokens each
    scheduled = [(state, 3) for state in states]
    batch = worker.build_batch(scheduled)
    assert batch.attn.max_query_len == 3 and batch.logits_rows.numel() == 9
    hidden = worker.model(batch.input_ids, batch.positions, worker.kv_cache.layers, batch.attn)
    module = worker.model.compute_logits(hidden, batch.logits_rows)
    fused = worker.fused_decode(batch)
    assert fused is not None
    assert_same_model_logits(fused, module, n_layers=worker.model.args.n_layers)
    files = read_meta_model(stories_dir)
    oracle = torch.stack([
        dense_logits(files.weights, files.params, state.token_ids)[-3 + j]
        for state in states for j in range(3)
    ])  # fmt: skip
    assert (fused.double() - oracle).abs().max().item() < 1e-4


@pytest.mark.parametrize(
    ("activations", "least", "most"), [("int8", 1e-4, 0.5), ("int16", 1e-7, 0.01)]
)
def test_quantized_activations_reach_the_fused_step(
    random_model, tmp_path, activations, least, most
):
    path = write_model(random_model, tmp_path / "m.gguf", "Q4_1")
    worker = start_worker(path, block_size=16, activations=activations)
    fused, module = decode_both_ways(worker)
    floats = load_checkpoint(path, torch.float32, "none").weights
    oracle = dense_oracle(floats, random_model.params)
    # 8-bit activations move logits by hundredths here, 16-bit ones by 1e-4 or less (far more
    # than float rounding, far less than a wrong weight), in both paths alike.
    for logits in (fused, module):
        error = (logits.double() - oracle).abs().max().item()
        assert least < error < most


def test_the_fused_step_is_for_the_cpu_kernel_backend_only(stories_dir) -> None:
    assert start_worker(stories_dir, attention_backend="torch").fused_decode is None


@torch.inference_mode()
def test_a_step_wider_than_the_fused_rows_takes_the_operator_path(stories_dir) -> None:
    # Its float loops lose to torch's GEMM on wide steps: those run per operator.
    worker = start_worker(stories_dir, block_size=16)
    assert worker.fused_decode.max_rows == MAX_FUSED_FLOAT32_ROWS
    assert_fused_up_to(worker, MAX_FUSED_FLOAT32_ROWS)


@torch.inference_mode()
@pytest.mark.parametrize("activations", ["float", "int16"])
def test_packed_weights_with_integer_activations_fuse_wider_steps(
    random_model, tmp_path, activations
) -> None:
    # The per-operator path runs the same integer products: only its overhead is saved.
    from worker.decode_step import MAX_FUSED_INTEGER_ROWS, MAX_FUSED_ROWS

    path = write_model(random_model, tmp_path / "m.gguf", "Q4_1")
    worker = start_worker(path, block_size=16, activations=activations)
    rows = MAX_FUSED_INTEGER_ROWS if activations == "int16" else MAX_FUSED_ROWS
    assert worker.fused_decode.max_rows == rows
    assert_fused_up_to(worker, rows)


def assert_fused_up_to(worker, rows: int) -> None:
    states = [RequestState(f"w{i}", [1, 5 + i], [i], ALL_ROWS, 1, 1) for i in range(rows + 1)]
    assert worker.fused_decode(worker.build_batch([(s, 1) for s in states])) is None
    assert worker.fused_decode(worker.build_batch([(s, 1) for s in states[:-1]])) is not None
