"""Chat templates render as transformers' apply_chat_template renders them, in a sandbox."""

from __future__ import annotations

import pytest

from modelfiles.chat_template import ChatTemplateError, render_chat

# Llama 3's template, in the shape its tokenizer_config.json holds it.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "  Hi there!  "},
]


def render(template: str, messages=MESSAGES, add_generation_prompt: bool = True) -> str:
    return render_chat(
        template,
        messages,
        add_generation_prompt=add_generation_prompt,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
    )


def test_llama3_template_renders_as_transformers_does() -> None:
    assert render(LLAMA3) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render(LLAMA3, add_generation_prompt=False).endswith("Hi there!<|eot_id|>")


def test_block_whitespace_is_trimmed_and_helpers_exist() -> None:
    template = (
        "{% for m in messages %}\n"
        "  {% if m.role == 'user' %}\n"
        "{{ m.content | tojson }}|{{ strftime_now('%Y') | length }}\n"
        "  {% endif %}\n"
        "{% endfor %}"
    )
    assert render(template, [{"role": "user", "content": "日本 😀"}]) == '"日本 😀"|4\n'


def test_a_template_refusal_is_a_value_error_with_its_words() -> None:
    template = (
        "{% if messages[0].role == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="no system role"):
        render(template)


def test_a_template_cannot_reach_python_internals() -> None:
    with pytest.raises(ChatTemplateError):
        render("{{ messages.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(ChatTemplateError):
        render("{% set x = messages.append(1) %}")  # the messages are immutable to it


def test_broken_templates_and_messages_are_refused() -> None:
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render("{% for m in messages %}")
    with pytest.raises(ValueError, match=r"messages\[0\].content must be a string"):
        render(LLAMA3, [{"role": "user", "content": None}])
    with pytest.raises(ValueError, match="at least 1 message"):
        render(LLAMA3, [])
