"""The bundled stories260K reproduces the greedy text llama2.c publishes for it."""

from __future__ import annotations

import sentencepiece as spm

from tests.worker.driver import GREEDY, generate_alone, start_worker


def test_greedy_256_tokens_from_bos_reproduce_the_published_text(stories_dir):
    worker = start_worker(stories_dir)
    info = worker.info()
    assert (info.bos_id, info.eos_id, info.vocab_size, info.max_seq_len) == (1, 2, 512, 512)

    seq = generate_alone(worker, [info.bos_id], GREEDY, max_new_tokens=256)

    tokenizer = spm.SentencePieceProcessor(model_file=str(stories_dir / "tokenizer.model"))
    expected = (stories_dir / "greedy_from_bos_256.txt").read_text(encoding="utf-8")
    assert tokenizer.decode(seq.token_ids) == expected
