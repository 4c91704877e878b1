"""Render a model's chat template (Jinja, as Hugging Face's tokenizer_config.json and GGUF's
tokenizer.chat_template hold it) the way transformers' apply_chat_template does: a sandboxed
environment, trim_blocks and lstrip_blocks, `raise_exception`, `strftime_now`, a `tojson`
that keeps non-ASCII text. Any frontend (gRPC today, HTTP later) renders through here."""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Sequence
from typing import Any

MAX_MESSAGES = 1024


class ChatTemplateError(ValueError):
    """The template refused the messages (its raise_exception), or failed to render."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, **_: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.lru_cache(maxsize=8)
def _compile(template: str) -> Any:  # -> jinja2.Template
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except TemplateError as exc:
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc


def check_messages(messages: Sequence[dict[str, Any]]) -> None:
    """Every message a {"role": str, "content": str}; at least one."""
    if not messages:
        raise ValueError("messages must hold at least 1 message, got none")
    if len(messages) > MAX_MESSAGES:
        raise ValueError(f"messages may hold at most {MAX_MESSAGES}, got {len(messages)}")
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise ValueError(f"messages[{i}].role must be a non-empty string, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string, got {content!r}")


def render_chat(
    template: str,
    messages: Sequence[dict[str, Any]],
    *,
    add_generation_prompt: bool,
    bos_token: str,
    eos_token: str,
) -> str:
    """The prompt text; ValueError (ChatTemplateError for the template's own refusals)."""
    from jinja2 import TemplateError

    check_messages(messages)
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
        )
    except TemplateError as exc:
        raise ChatTemplateError(f"the chat template failed: {exc}") from exc


# Meta's Llama 2 chat format (llama/generation.py's chat_completion), for Meta checkpoints of
# the chat models, which bring no template: an optional system message folded into the first
# user turn between <<SYS>> markers, user and assistant alternating, each exchange in
# `<s>[INST] user [/INST] answer </s>`, and the last user turn left open for the answer.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}"
    "{% if not turns or turns[-1]['role'] != 'user' %}"
    "{{ raise_exception('the last message must be the user\\'s') }}{% endif %}"
    "{% for message in turns %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('after an optional system message, user and assistant messages "
    "must alternate, starting with the user') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% set content = message['content'] %}"
    "{% if loop.first and system is not none %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + content %}{% endif %}"
    "{{ bos_token + '[INST] ' + content | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)
