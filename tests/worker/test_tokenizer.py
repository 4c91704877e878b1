"""The Llama 2 SentencePiece tokenizer the random benchmark models use."""

from __future__ import annotations

import sentencepiece as spm


def test_llama2_tokenizer_ids(llama2_tokenizer_path):
    tokenizer = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_path))
    ids = [tokenizer.bos_id(), *tokenizer.encode("I believe the meaning of life is")]
    assert ids == [1, 306, 4658, 278, 6593, 310, 2834, 338]
    assert (tokenizer.bos_id(), tokenizer.eos_id(), tokenizer.pad_id()) == (1, 2, -1)
    assert tokenizer.vocab_size() == 32000
