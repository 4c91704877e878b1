"""The tokenizer a GGUF file carries in its header (tokenizer.ggml.*).

- `llama`: a SentencePiece vocabulary (pieces, scores, types). It is rebuilt as a
  SentencePiece BPE model proto, so encoding is SentencePiece's own. GGUF keeps no
  normalizer, so whitespace runs are kept as llama.cpp keeps them.
- `gpt2`: byte-level BPE (vocabulary and merges), rebuilt with Hugging Face's `tokenizers`;
  `tokenizer.ggml.pre` names the pre-tokenizer (the regex that splits text before BPE).

End of generation is EOS, plus EOT and EOM where the header names them, plus the control
tokens that end a turn in common chat formats (as llama.cpp does), so a chat stops at the
end of its turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelfiles.gguf_file import read_gguf
from modelfiles.tokenizer import Tokenizer, TokenizerError
from modelfiles.tokenizer_hf import HFTokenizer
from modelfiles.tokenizer_sp import SentencePieceTokenizer

# GGUF token types (the same numbers as SentencePiece's piece types).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|endoftext|>",
                      "<end_of_turn>", "<|end|>")  # fmt: skip
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> [(split regex, isolate digits one by one first)]
PRE_TOKENIZERS = {
    "default": (_GPT2_SPLIT, False),
    "gpt2": (_GPT2_SPLIT, False),
    "llama-bpe": (_LLAMA3_SPLIT, False),
    "llama3": (_LLAMA3_SPLIT, False),
    "smollm": (_GPT2_SPLIT, True),
    "starcoder": (_GPT2_SPLIT, True),
}


def gguf_tokenizer(path: Path) -> Tokenizer:
    meta = read_gguf(path).metadata(with_vocab=True)
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise TokenizerError(f"{path}: the GGUF file holds no vocabulary (tokenizer.ggml.tokens)")
    eos_ids = end_of_generation_ids(meta)
    template = meta.get("tokenizer.chat_template")
    if kind == "llama":
        return SentencePieceTokenizer(
            model_proto=sentencepiece_proto(meta),
            extra_eos_ids=eos_ids,
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", True)),
            chat_template=template,
            name=str(path),
        )
    if kind == "gpt2":
        tokens = meta["tokenizer.ggml.tokens"]
        bos = meta.get("tokenizer.ggml.bos_token_id")
        return HFTokenizer(
            byte_level_bpe(path, meta),
            name=str(path),
            bos_token=tokens[bos] if bos is not None else None,
            eos_token=tokens[eos_ids[0]] if eos_ids else None,
            extra_eos_ids=eos_ids,
            add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
            chat_template=template,
        )
    raise TokenizerError(
        f"{path}: tokenizer model {kind!r} is not supported; Loom reads 'llama' "
        "(SentencePiece) and 'gpt2' (byte-level BPE) vocabularies"
    )


def end_of_generation_ids(meta: dict[str, Any]) -> list[int]:
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type", [])
    ids = [meta.get(f"tokenizer.ggml.{key}_token_id") for key in ("eos", "eot", "eom")]
    for text in END_OF_TURN_TOKENS:
        if text in tokens:
            token_id = tokens.index(text)
            if token_id < len(types) and types[token_id] == CONTROL:
                ids.append(token_id)
    return list(dict.fromkeys(int(i) for i in ids if i is not None and 0 <= i < len(tokens)))


def sentencepiece_proto(meta: dict[str, Any]) -> bytes:
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    proto = sp_pb2.ModelProto()
    for piece, score, kind in zip(tokens, scores, types, strict=True):
        proto.pieces.add(piece=piece, score=score, type=kind)
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = BYTE in types
    for name in ("unk", "bos", "eos", "pad"):
        token_id = meta.get(f"tokenizer.ggml.{name}_token_id")
        if name == "unk" and token_id is None and UNKNOWN in types:
            token_id = types.index(UNKNOWN)
        if token_id is None or not 0 <= token_id < len(tokens):
            setattr(spec, f"{name}_id", -1)
            continue
        setattr(spec, f"{name}_id", int(token_id))
        setattr(spec, f"{name}_piece", tokens[token_id])
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return proto.SerializeToString()


def byte_level_bpe(path: Path, meta: dict[str, Any]) -> Any:  # -> tokenizers.Tokenizer
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RustTokenizer

    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(
            f"{path}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; Loom "
            f"reads {', '.join(PRE_TOKENIZERS)}"
        )
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = RustTokenizer(models.BPE(vocab, merges, ignore_merges=False))
    split, digits = PRE_TOKENIZERS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
    steps += [
        pre_tokenizers.Split(Regex(split), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()

    def added(kind: int) -> list[Any]:
        return [
            AddedToken(token, special=kind == CONTROL, normalized=False)
            for token, token_kind in zip(tokens, types, strict=True)
            if token_kind == kind
        ]

    # Control tokens (chat markers, BOS, EOS) decode to nothing; user-defined ones to text.
    tokenizer.add_special_tokens(added(CONTROL))
    tokenizer.add_tokens(added(USER_DEFINED))
    return tokenizer
