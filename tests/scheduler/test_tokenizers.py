"""The tokenizer seam: tokenizer.json (byte-level BPE, and Llama 2 converted by transformers),
GGUF vocabularies of both styles, BOS/EOS/special tokens from tokenizer_config.json and
generation_config.json; each checked against the tokenizer it was made from."""

from __future__ import annotations

import json

import pytest
from gguf import GGUFWriter

from modelfiles.tokenizer import TokenizerError, load_tokenizer
from modelfiles.tokenizer_gguf import gguf_tokenizer
from modelfiles.tokenizer_hf import HFTokenizer
from modelfiles.tokenizer_sp import SentencePieceTokenizer
from tests.models.gguf_writer import sentencepiece_vocabulary
from tests.scheduler.bpe_files import (
    CHAT_TEMPLATE,
    CORPUS,
    train_byte_level_bpe,
    write_gguf_vocabulary,
    write_hf_dir,
)

TEXTS = [
    *CORPUS,
    "I believe the meaning of life is",
    "  leading spaces, trailing  ",
    "mixed 日本 and English, numbers 3.14159 and 2024-11-30",
    "tabs\tand\nnew\n\nlines",
    "🎉",
]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return write_hf_dir(
        train_byte_level_bpe(),
        tmp_path_factory.mktemp("bpe"),
        add_bos_token=True,
        chat_template=CHAT_TEMPLATE,
        eos_ids=[2, 0],
    )


def test_byte_level_bpe_round_trips_text_and_ids(bpe_dir) -> None:
    tokenizer = HFTokenizer.from_dir(bpe_dir)
    for text in TEXTS:
        ids = tokenizer.encode(text, add_bos=False)
        assert tokenizer.decode(ids) == text
        assert tokenizer.encode(tokenizer.decode(ids), add_bos=False) == ids
    pieces = [tokenizer.id_to_piece(i) for i in tokenizer.encode("你好", add_bos=False)]
    assert len(pieces) >= 2 and all(p for p in pieces)  # split over byte tokens


def test_tokenizer_config_gives_bos_eos_ids_and_special_tokens(bpe_dir) -> None:
    tokenizer = HFTokenizer.from_dir(bpe_dir)
    assert (tokenizer.bos_id, tokenizer.bos_token, tokenizer.eos_token) == (
        1,
        "<|im_start|>",
        "<|im_end|>",
    )
    assert tokenizer.eos_ids == (2, 0)  # tokenizer_config's EOS first, then generation_config's
    assert tokenizer.add_bos
    ids = tokenizer.encode("hi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2  # BOS added; the special token written in text is one id
    assert tokenizer.decode(ids) == "hi"  # special tokens decode to nothing
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_without_add_bos_token_the_post_processor_decides(tmp_path) -> None:
    tokenizer = HFTokenizer.from_dir(write_hf_dir(train_byte_level_bpe(), tmp_path))
    assert not tokenizer.add_bos  # a bare byte-level BPE adds nothing
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_bos=False)


@pytest.mark.slow
def test_llama2_converted_to_tokenizer_json_gives_sentencepiece_ids(
    llama2_tokenizer_path, tmp_path
) -> None:
    transformers = pytest.importorskip("transformers")
    source = tmp_path / "sp"
    source.mkdir()
    (source / "tokenizer.model").write_bytes(llama2_tokenizer_path.read_bytes())
    transformers.LlamaTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp_path / "hf"))
    hf = HFTokenizer.from_dir(tmp_path / "hf")
    sp = SentencePieceTokenizer(llama2_tokenizer_path)
    assert (hf.vocab_size, hf.bos_id, hf.eos_ids) == (32000, 1, (2,))
    for text in TEXTS:
        ids = sp.encode(text, add_bos=False)
        assert hf.decode(ids) == sp.decode(ids)
        # transformers' BPE conversion merges runs of spaces in another order than
        # SentencePiece's scores do; everything else gives the same ids, both ways.
        if "  " not in text:
            assert hf.encode(text, add_bos=False) == ids, text
            assert hf.encode(hf.decode(ids), add_bos=False) == ids


def write_sentencepiece_gguf(model_file, path):
    writer = GGUFWriter(str(path), "llama")
    sentencepiece_vocabulary(model_file)(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.slow
def test_a_gguf_llama_vocabulary_encodes_as_sentencepiece(llama2_tokenizer_path, tmp_path):
    gguf = gguf_tokenizer(write_sentencepiece_gguf(llama2_tokenizer_path, tmp_path / "v.gguf"))
    sp = SentencePieceTokenizer(llama2_tokenizer_path)
    assert (gguf.vocab_size, gguf.bos_id, gguf.eos_ids, gguf.add_bos) == (32000, 1, (2,), True)
    assert gguf.encode("I believe the meaning of life is") == [
        1,
        306,
        4658,
        278,
        6593,
        310,
        2834,
        338,
    ]
    for text in TEXTS:
        assert gguf.encode(text) == sp.encode(text), text
        assert gguf.decode(sp.encode(text)) == sp.decode(sp.encode(text))


def test_stories_gguf_vocabulary_keeps_byte_fallback(stories_dir, tmp_path):
    model_file = stories_dir / "tokenizer.model"
    gguf = gguf_tokenizer(write_sentencepiece_gguf(model_file, tmp_path / "v.gguf"))
    sp = SentencePieceTokenizer(model_file)
    for text in ["Once upon a time, Lily saw a cat.", "你好 😀 café", "a\nb"]:
        assert gguf.encode(text) == sp.encode(text), text


@pytest.mark.parametrize(("pre", "digits"), [("gpt2", False), ("smollm", True)])
def test_a_gguf_gpt2_vocabulary_encodes_as_the_tokenizer_it_came_from(tmp_path, pre, digits):
    trained = train_byte_level_bpe(digits=digits)
    gguf = gguf_tokenizer(write_gguf_vocabulary(trained, tmp_path / "v.gguf", pre))
    for text in [*TEXTS, "<|im_start|>user\nhi<|im_end|>"]:
        assert gguf.encode(text) == trained.encode(text).ids, text
    assert gguf.eos_ids == (2, 0)  # EOS, and <|endoftext|>: a control token that ends a turn
    assert not gguf.add_bos and gguf.chat_template == CHAT_TEMPLATE
    if digits:
        assert [gguf.id_to_piece(i) for i in gguf.encode("2024")] == ["2", "0", "2", "4"]


def test_an_unknown_gguf_pre_tokenizer_is_named(tmp_path):
    path = write_gguf_vocabulary(train_byte_level_bpe(), tmp_path / "v.gguf", "made-up")
    with pytest.raises(TokenizerError, match="pre-tokenizer 'made-up'.*llama-bpe"):
        gguf_tokenizer(path)


def test_a_model_directory_picks_tokenizer_json_over_tokenizer_model(stories_dir, tmp_path):
    assert isinstance(load_tokenizer(stories_dir), SentencePieceTokenizer)
    model_dir = write_hf_dir(train_byte_level_bpe(), tmp_path / "m")
    (model_dir / "config.json").write_text(json.dumps({"eos_token_id": [2, 1]}))
    (model_dir / "tokenizer.model").write_bytes((stories_dir / "tokenizer.model").read_bytes())
    tokenizer = load_tokenizer(model_dir)
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eos_ids == (2, 1)  # config.json's list joins tokenizer_config's EOS
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    tokenizer = load_tokenizer(model_dir)
    assert isinstance(tokenizer, SentencePieceTokenizer)
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.eos_ids == (2, 1)


def test_a_directory_without_tokenizer_is_refused(stories_dir, tmp_path):
    (tmp_path / "params.json").write_text((stories_dir / "params.json").read_text())
    with pytest.raises(TokenizerError, match="neither tokenizer.json .* nor tokenizer.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")  # e.g. Llama 3's tiktoken file
    with pytest.raises(TokenizerError, match="tokenizer.model: not a SentencePiece model"):
        load_tokenizer(tmp_path)
