"""The bundled stories260K reproduces the greedy text llama2.c publishes for it."""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch

from tests.worker.driver import GREEDY, all_position_logits, generate_alone, start_worker
from worker.cpu_kernels import load_cpu_kernels
from worker.loader import load_checkpoint
from worker.model import Transformer

pytestmark = pytest.mark.slow

BACKENDS = [
    "torch",
    pytest.param("cpu", marks=pytest.mark.skipif(not load_cpu_kernels(), reason="no compiler")),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_greedy_256_tokens_from_bos_reproduce_the_published_text(stories_dir, backend):
    worker = start_worker(stories_dir, attention_backend=backend)
    assert worker.attention_backend.name == backend
    info = worker.info()
    assert (info.bos_id, info.eos_id, info.vocab_size, info.max_seq_len) == (1, 2, 512, 512)

    seq = generate_alone(worker, [info.bos_id], GREEDY, max_new_tokens=256)

    tokenizer = spm.SentencePieceProcessor(model_file=str(stories_dir / "tokenizer.model"))
    expected = (stories_dir / "greedy_from_bos_256.txt").read_text(encoding="utf-8")
    assert tokenizer.decode(seq.token_ids) == expected


def test_fused_projections_give_the_same_logits_as_unfused(stories_dir):
    worker = start_worker(stories_dir, attention_backend="torch")
    assert worker.model.fused
    prompt = [1, 403, 407, 261, 378, 309, 7, 35, 43]
    fused = all_position_logits(worker, prompt)
    loaded = load_checkpoint(stories_dir, torch.float32)
    worker.model = Transformer.from_weights(loaded.args, loaded.weights, worker.device, fused=False)
    assert not hasattr(worker.model.layers[0].attention, "wqkv")
    unfused = all_position_logits(worker, prompt)
    # The same sums in another grouping: float32 rounding apart (logits are of order 10).
    assert (fused - unfused).abs().max().item() < 1e-4
    assert torch.equal(fused.argmax(-1), unfused.argmax(-1))
