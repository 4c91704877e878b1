"""Chat over gRPC: ApplyChatTemplate renders the model's own template (here a GGUF written
from stories260K that carries one), `python -m client chat` talks through it, and the EOS ids
the GGUF names all end a generation."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from client import Client
from loompb import serving_pb2
from scheduler import Engine, SamplingParams
from tests.conftest import REPO_ROOT
from tests.models.gguf_writer import GGUFOptions, write_stories_gguf
from tests.server.conftest import NUM_KV_BLOCKS, engine_is_idle, wait_until
from tests.worker.driver import read_meta_model

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('this model takes no system message') }}"
    "{% endif %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)
HELLO = [{"role": "user", "content": "Once upon a time"}]


@pytest.fixture(scope="module")
def chat_gguf(stories_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("chat") / "stories-chat.gguf"
    return write_stories_gguf(
        read_meta_model(stories_dir), path, GGUFOptions(chat_template=TEMPLATE)
    )


@pytest.fixture
def chat_server(start_server, chat_gguf):
    return start_server(Engine.from_model_dir(chat_gguf, num_kv_blocks=NUM_KV_BLOCKS))


def test_apply_chat_template_renders_the_models_template(chat_server) -> None:
    with Client(chat_server.target, timeout=30) as client:
        info = client.model_info()
        assert info.chat_template == TEMPLATE and list(info.eos_token_ids) == [2]
        reply = client.apply_chat_template(HELLO)
        assert reply.prompt == "<s>user: Once upon a time\nassistant:"
        tokenizer = chat_server.engine.tokenizer
        ids = list(reply.prompt_token_ids)
        assert ids[0] == 1 and ids.count(1) == 1  # the template's BOS, and no second one
        assert ids == tokenizer.encode(reply.prompt, add_bos=False)
        bare = client.apply_chat_template(HELLO, add_generation_prompt=False)
        assert bare.prompt == "<s>user: Once upon a time\n"
        answer = client.chat(HELLO, max_tokens=8, temperature=0)
        assert answer.usage.prompt_tokens == len(ids) and answer.usage.completion_tokens >= 1
        assert answer.text == client.generate(ids, max_tokens=8, temperature=0).text
    wait_until(lambda: engine_is_idle(chat_server.engine), 10, "the engine is idle")


def test_messages_the_template_refuses_are_invalid_arguments(chat_server) -> None:
    with Client(chat_server.target, timeout=30) as client:
        for messages, words in [
            ([], "at least 1 message"),
            ([{"role": "system", "content": "be brief"}, *HELLO], "takes no system message"),
            ([{"role": "", "content": "hi"}], "role must be a non-empty string"),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                client.apply_chat_template(messages)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert words in caught.value.details()


def test_a_model_without_template_fails_the_precondition(server) -> None:
    with Client(server.target, timeout=30) as client:
        assert client.model_info().chat_template == ""
        with pytest.raises(grpc.RpcError) as caught:
            client.apply_chat_template(HELLO)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no chat template" in caught.value.details()


def run_client_chat(
    target: str, stdin: str, sampling: tuple[str, ...] = ("--temperature", "0")
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", "chat", "--target", target, *sampling,
         "--max-tokens", "12", "--timeout", "30"],
        cwd=REPO_ROOT, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_client_chat_holds_a_conversation(chat_server) -> None:
    result = run_client_chat(chat_server.target, "Once upon a time\nThen what?\n\n")
    assert result.returncode == 0, result.stderr
    replies = result.stdout.splitlines()
    assert len(replies) == 2 and all(replies)
    with Client(chat_server.target, timeout=30) as client:
        first = client.chat(HELLO, max_tokens=12, temperature=0).text
        assert replies[0] == first
        history = [*HELLO, {"role": "assistant", "content": first}]
        second = client.chat([*history, {"role": "user", "content": "Then what?"}], max_tokens=12,
                             temperature=0).text  # fmt: skip
    assert replies[1] == second  # the second turn saw the first


def test_client_chat_decodes_greedily_where_the_model_recommends_no_sampling(chat_server):
    # The GGUF carries no generation config: without flags the chat is greedy, not a draw
    # at the server's temperature 1 (which a small chat model answers badly).
    defaulted = run_client_chat(chat_server.target, "Once upon a time\n\n", sampling=())
    greedy = run_client_chat(chat_server.target, "Once upon a time\n\n")
    drawn = run_client_chat(
        chat_server.target, "Once upon a time\n\n", sampling=("--temperature", "1.5", "--seed", "3")
    )
    assert defaulted.returncode == greedy.returncode == drawn.returncode == 0
    assert defaulted.stdout == greedy.stdout != drawn.stdout


def test_client_chat_names_a_model_without_template(server) -> None:
    result = run_client_chat(server.target, "hello\n")
    assert result.returncode == 1
    assert "FAILED_PRECONDITION" in result.stderr and "no chat template" in result.stderr
    # With nothing to say (stdin at its end) too, rather than a silent exit 0.
    result = run_client_chat(server.target, "")
    assert result.returncode == 1 and "stories260K has no chat template" in result.stderr


def test_every_eos_id_the_gguf_names_ends_the_generation(start_server, stories_dir, tmp_path):
    files = read_meta_model(stories_dir)
    plain = Engine.from_model_dir(stories_dir, num_kv_blocks=NUM_KV_BLOCKS)
    [greedy] = plain.generate([[1, 403, 407]], SamplingParams(max_tokens=1, temperature=0))
    first = greedy.token_ids[0]  # made an end-of-turn id below
    path = write_stories_gguf(files, tmp_path / "eot.gguf", GGUFOptions(eot_token_id=first))
    server = start_server(Engine.from_model_dir(path, num_kv_blocks=NUM_KV_BLOCKS))
    with Client(server.target, timeout=30) as client:
        assert list(client.model_info().eos_token_ids) == [2, first]
        reply = client.generate([1, 403, 407], max_tokens=8, temperature=0)
        assert list(reply.token_ids) == [first]
        assert reply.finish_reason == serving_pb2.FINISH_REASON_STOP
        ignored = client.generate([1, 403, 407], max_tokens=8, temperature=0, ignore_eos=True)
        assert len(ignored.token_ids) == 8 and ignored.token_ids[0] == first
