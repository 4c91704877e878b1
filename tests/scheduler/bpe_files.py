"""Byte-level BPE tokenizers made in the tests with Hugging Face's `tokenizers` (trained on a
small corpus with emoji and CJK so that many characters stay split over byte tokens), saved as
a Hugging Face directory or as a GGUF vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

from gguf import GGUFWriter
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Once upon a time there was a little girl named Lily. She loved to play outside.",
    "The quick brown fox jumps over the lazy dog 1234567890 times!",
    "你好，世界！今天天气很好。日本語のテキストも少しあります。",
    "Emoji: 😀 🎉 👍🏽 ❤️ and café, naïve, über — done.",
    "def main():\n    print('hello')\n    return 42\n",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_byte_level_bpe(vocab_size: int = 400, digits: bool = False) -> Tokenizer:
    """GPT-2's byte-level BPE; with `digits`, numbers split one digit per token first, as
    SmolLM's tokenizer does."""
    tokenizer = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if digits
        else byte_level
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer)
    return tokenizer


def write_hf_dir(tokenizer: Tokenizer, directory: Path, **config: object) -> Path:
    """tokenizer.json + tokenizer_config.json (+ generation_config.json when `eos_ids`)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    eos_ids = config.pop("eos_ids", None)
    settings = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", **config}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    if eos_ids is not None:
        (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_ids}))
    return directory


def write_gguf_vocabulary(tokenizer: Tokenizer, path: Path, pre: str) -> Path:
    """tokenizer.ggml.* for a `gpt2` vocabulary, as llama.cpp's converter writes them, in a
    GGUF file holding no tensors."""
    state = json.loads(tokenizer.to_str())
    vocab = state["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    writer = GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in tokens])  # 3: control
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
