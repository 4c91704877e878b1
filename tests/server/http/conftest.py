"""Live servers with the OpenAI-compatible API on loopback, and OpenAI's own client."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import openai
import pytest

from frontend.embedded import ServerHandle
from scheduler import Engine
from tests.models.gguf_writer import GGUFOptions, write_stories_gguf
from tests.server.conftest import NUM_KV_BLOCKS, make_engine
from tests.worker.driver import read_meta_model

# A chat template the stories model can follow: user turns, then "assistant:".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


class HeldEngine(Engine):
    """An engine whose loop takes no step until `running` is set: what is queued stays
    queued, so a test can act on a request before the engine does."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.running = threading.Event()

    def step(self) -> Any:
        self.running.wait()
        return super().step()


def held_engine(**engine_kwargs: Any) -> HeldEngine:
    base = make_engine(**engine_kwargs)
    return HeldEngine(base.worker, base.tokenizer, base.config)


def openai_client(server: ServerHandle, api_key: str = "none", **options: Any) -> openai.OpenAI:
    """No retries: a test sees each status the server answers."""
    return openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, **options)


@pytest.fixture
def http_server(start_server: Callable[..., ServerHandle]) -> ServerHandle:
    return start_server(http_port=0)


@pytest.fixture
def client(http_server: ServerHandle) -> openai.OpenAI:
    return openai_client(http_server)


@pytest.fixture(scope="session")
def chat_gguf(stories_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "stories-chat.gguf"
    options = GGUFOptions(chat_template=CHAT_TEMPLATE)
    return write_stories_gguf(read_meta_model(stories_dir), path, options)


@pytest.fixture
def chat_server(start_server, chat_gguf) -> ServerHandle:
    engine = Engine.from_model_dir(chat_gguf, num_kv_blocks=NUM_KV_BLOCKS)
    return start_server(engine, http_port=0)
