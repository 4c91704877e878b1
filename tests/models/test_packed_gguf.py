"""Quantized GGUF tensors kept packed: the same tensors as the dequantized load, and a model
per block type whose packed forward follows the dequantized float32 oracle (`--quantization
none`) to float32 rounding with `--activations float`, and with int16 (the default) or int8
activations stays within that path's error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from tests.models.gguf_writer import GGUFOptions, sentencepiece_vocabulary, write_stories_gguf
from tests.models.test_gguf_dequant import random_blocks
from tests.worker.driver import (
    ModelFiles,
    all_position_logits,
    assert_same_model_logits,
    start_worker,
)
from worker.cpu_kernels import load_cpu_kernels
from worker.loader import load_checkpoint
from worker.packed_modules import PackedEmbedding, PackedLinear
from worker.packed_weights import GROUPED, PackedTensor

pytestmark = pytest.mark.skipif(not load_cpu_kernels(), reason="no C++ compiler here")

TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"]
SHORT = [1, 403, 14, 292, 77, 5, 498, 260, 261, 13, 51]  # decode-sized rows
LONG = [(7 * i + 3) % 500 + 1 for i in range(40)]  # a prefill of 40 rows


@pytest.fixture(scope="module")
def random_model(stories_dir) -> ModelFiles:
    return make_packable_model(stories_dir)


def make_packable_model(stories_dir) -> ModelFiles:
    """A random Llama whose rows are whole 256-value super-blocks (dim 256, MLP 768), with
    stories260K's 512-piece vocabulary."""
    gen = torch.Generator().manual_seed(0)
    dim, hidden, vocab, layers = 256, 768, 512, 2
    shapes = {"tok_embeddings.weight": (vocab, dim), "output.weight": (vocab, dim),
              "norm.weight": (dim,)}  # fmt: skip
    for i in range(layers):
        p = f"layers.{i}."
        shapes |= {p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (128, dim),
                   p + "attention.wv.weight": (128, dim), p + "attention.wo.weight": (dim, dim),
                   p + "feed_forward.w1.weight": (hidden, dim),
                   p + "feed_forward.w2.weight": (dim, hidden),
                   p + "feed_forward.w3.weight": (hidden, dim),
                   p + "attention_norm.weight": (dim,), p + "ffn_norm.weight": (dim,)}  # fmt: skip
    weights = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=gen)
        weights[name] = 1 + 0.1 * noise if len(shape) == 1 else noise / shape[-1] ** 0.5
    params = {"dim": dim, "n_layers": layers, "n_heads": 4, "n_kv_heads": 2, "vocab_size": vocab,
              "norm_eps": 1e-5, "max_seq_len": 512, "rope_theta": 10000.0}  # fmt: skip
    return ModelFiles(stories_dir, params, weights)


def k_blocks(type_name: str, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Blocks of a K type (which the gguf package cannot quantize): random quants with
    scales that give values of about 1 / sqrt(row length), centred near zero."""
    rows, cols = shape
    raw = random_blocks(type_name, rows, cols // 256, seed)
    blocks = raw.reshape(-1, raw.shape[1] // (cols // 256))
    rng = np.random.default_rng(seed)
    size = 1.0 / cols**0.5 / 40
    if type_name == "Q6_K":  # values d * scale * (q - 32): scales -8..8
        scales = rng.integers(-8, 9, size=(blocks.shape[0], 16)).astype(np.int8)
        blocks[:, 192:208] = scales.view(np.uint8)
        d = np.full(blocks.shape[0], size / 2, np.float16)
        blocks[:, 208:210] = d.view(np.uint8).reshape(-1, 2)
    else:
        top = 16 if type_name == "Q4_K" else 32  # the largest quant
        blocks[:, 0:2] = np.full(blocks.shape[0], size, np.float16).view(np.uint8).reshape(-1, 2)
        blocks[:, 2:4] = (
            np.full(blocks.shape[0], size * top / 2, np.float16).view(np.uint8).reshape(-1, 2)
        )
        blocks[:, 4:16] = 0x41  # every scale and min 1 (plus 16s from the shared top bits)
    return blocks.reshape(raw.shape)


def write_model(files: ModelFiles, path, type_name: str):
    if type_name in ("Q8_0", "Q4_0", "Q4_1"):
        options = GGUFOptions(quantize_all=Q[type_name])
    else:
        options = GGUFOptions(raw_blocks={
            name: (k_blocks(type_name, tuple(w.shape), seed), Q[type_name])
            for seed, (name, w) in enumerate(files.weights.items()) if w.dim() == 2
        })  # fmt: skip
    options.vocabulary = sentencepiece_vocabulary(files.model_dir / "tokenizer.model")
    return write_stories_gguf(files, path, options)


@pytest.mark.parametrize("type_name", TYPES)
def test_packed_and_dequantized_loads_hold_the_same_tensors(random_model, tmp_path, type_name):
    path = write_model(random_model, tmp_path / "m.gguf", type_name)
    floats = load_checkpoint(path, torch.float32, "none").weights
    packed = load_checkpoint(path, torch.float32, "auto").weights
    assert floats.keys() == packed.keys()
    kinds = set()
    for name, weight in packed.items():
        if isinstance(weight, PackedTensor):
            kinds.add(weight.type_name)
            assert torch.equal(weight.dequantize(), floats[name]), name
            assert torch.equal(torch.ops.loom.quant_rows(
                weight.data, torch.arange(weight.shape[0]), weight.kernel_type, weight.shape[1]
            ), floats[name]), name  # fmt: skip
        else:
            assert torch.equal(weight, floats[name]), name
    # Q4_0 and Q4_1 are regrouped by eights at load (worker/csrc/quant_blocks.h), their values
    # unchanged.
    assert kinds == {GROUPED.get(type_name, type_name)}


@pytest.mark.parametrize("type_name", TYPES)
def test_packed_forward_follows_the_float32_oracle(random_model, tmp_path, type_name):
    # Float activations: the dequantized model's results, to float32 rounding.
    path = write_model(random_model, tmp_path / "m.gguf", type_name)
    packed = start_worker(path, activations="float")
    oracle = start_worker(path, quantization="none")
    assert isinstance(packed.model.output, PackedLinear)
    assert packed.model.output.activations == "float"
    for prompt in (SHORT, LONG):
        ours, theirs = all_position_logits(packed, prompt), all_position_logits(oracle, prompt)
        assert_same_model_logits(ours, theirs, random_model.params["n_layers"])


# The largest error of the oracle's 10 likeliest logprobs each path may reach on this random
# model, measured per type (int8 0.01-0.16 nats, int16 below 1e-3), where a wrong block
# layout or row order moves them by whole nats; and the least it must differ from the oracle
# to show that the quantized activations did run.
ACTIVATION_BOUNDS = {"int8": (0.25, 1e-6), "int16": (0.01, 1e-9)}


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("activations", sorted(ACTIVATION_BOUNDS))
def test_quantized_activations_stay_near_the_float32_oracle(
    random_model, tmp_path, type_name, activations
):
    path = write_model(random_model, tmp_path / "m.gguf", type_name)
    packed = start_worker(path, activations=activations)
    oracle = start_worker(path, quantization="none")
    model = packed.model
    assert isinstance(model.layers[0].feed_forward.w13, PackedLinear)
    assert model.layers[0].feed_forward.w13.activations == activations
    assert isinstance(model.tok_embeddings, PackedEmbedding)
    bound, least = ACTIVATION_BOUNDS[activations]
    for prompt in (SHORT, LONG):
        ours = torch.log_softmax(all_position_logits(packed, prompt), -1)
        theirs = torch.log_softmax(all_position_logits(oracle, prompt).double(), -1)
        top = theirs.topk(10, -1).indices
        error = (ours.gather(-1, top) - theirs.gather(-1, top)).abs().max().item()
        assert least < error < bound, (len(prompt), error)
        # The oracle's choice wherever it is not a near tie.
        top2 = theirs.topk(2, -1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
        assert torch.equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear])
