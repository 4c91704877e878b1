"""A Meta chat checkpoint (a directory named like Meta's llama-2-7b-chat) chats in Meta's
Llama 2 format: the ids equal those Meta's reference chat_completion builds, segment by
segment, with SentencePiece itself."""

from __future__ import annotations

import pytest
import sentencepiece as spm

from modelfiles.chat_template import ChatTemplateError
from modelfiles.tokenizer import NoChatTemplateError, load_tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
DIALOG = [
    {"role": "system", "content": "Tell short stories."},
    {"role": "user", "content": "Once upon a time "},
    {"role": "assistant", "content": " there was a cat."},
    {"role": "user", "content": "What did the cat do?"},
]


def meta_chat_ids(sp: spm.SentencePieceProcessor, dialog: list[dict]) -> list[int]:
    """llama/generation.py's chat_completion, written out."""
    if dialog[0]["role"] == "system":
        merged = B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]
        dialog = [{"role": "user", "content": merged}, *dialog[2:]]
    ids: list[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2], strict=False):
        text = f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} "
        ids += [sp.bos_id(), *sp.encode(text), sp.eos_id()]
    return ids + [sp.bos_id(), *sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")]


@pytest.fixture
def chat_dir(stories_dir, tmp_path):
    directory = tmp_path / "llama-2-tiny-chat"
    directory.mkdir()
    for name in ("params.json", "consolidated.00.pth", "tokenizer.model"):
        (directory / name).symlink_to(stories_dir / name)
    return directory


def test_meta_chat_checkpoints_speak_metas_format(chat_dir, stories_dir) -> None:
    tokenizer = load_tokenizer(chat_dir)
    sp = spm.SentencePieceProcessor(model_file=str(stories_dir / "tokenizer.model"))
    for dialog in (DIALOG, DIALOG[1:], DIALOG[1:2], [DIALOG[0], DIALOG[1]]):
        text, ids = tokenizer.encode_chat(dialog)
        assert ids == meta_chat_ids(sp, dialog), dialog
    assert tokenizer.apply_chat_template(DIALOG[1:2]) == "<s>[INST] Once upon a time [/INST]"
    with pytest.raises(ChatTemplateError, match="must alternate"):
        tokenizer.apply_chat_template([DIALOG[1], DIALOG[1], DIALOG[3]])
    with pytest.raises(ChatTemplateError, match="last message must be the user's"):
        tokenizer.apply_chat_template(DIALOG[:3])
    # Other Meta checkpoints are base models: no chat format is made up for them.
    with pytest.raises(NoChatTemplateError):
        load_tokenizer(stories_dir).apply_chat_template(DIALOG[1:2])
