"""The layers stay apart (frontend -> engine -> step contract <- worker), and every setting is
declared once: the serve flags are exactly the settings fields."""

from __future__ import annotations

import argparse
import dataclasses
import pkgutil
import subprocess
import sys

import pytest

import scheduler
from common.flags import flag_name, settings_from_args, settings_to_argv
from common.settings import leaf_fields
from frontend.cli import build_parser
from frontend.config import ServeConfig
from scheduler.config import EngineConfig
from tests.conftest import REPO_ROOT, STORIES_DIR
from worker.cli import build_parser as build_worker_parser
from worker.config import (
    SCHEDULER_ONLY_SETTINGS,
    CacheConfig,
    ModelConfig,
    ParallelConfig,
    WorkerServeConfig,
)


def imported_after(code: str) -> set[str]:
    """Top-level packages a fresh interpreter holds after running `code`."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}; import sys; print(sorted(sys.modules))"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {name.split(".")[0] for name in eval(out)}


def test_the_engine_package_imports_no_grpc_server_code_or_torch() -> None:
    modules = sorted(
        f"scheduler.{m.name}"
        for m in pkgutil.iter_modules(scheduler.__path__)
        if m.name != "__main__"  # the `python -m frontend` entry point starts the server
    )
    assert "scheduler.engine" in modules and "scheduler.scheduler" in modules
    loaded = imported_after("import " + ", ".join(modules))
    assert not loaded & {"grpc", "frontend", "loompb", "torch", "prometheus_client"}


def test_importing_a_request_pulls_in_no_tokenizer() -> None:
    tokenizer_libraries = {"sentencepiece", "tokenizers", "gguf", "jinja2"}
    assert not imported_after("import scheduler.request") & tokenizer_libraries
    # Each tokenizer library is imported when a model needs it, not with the engine.
    assert not imported_after("from scheduler import Engine") & tokenizer_libraries
    load = f"import modelfiles.tokenizer as t; t.load_tokenizer({str(STORIES_DIR)!r})"
    loaded = imported_after(load)
    assert "sentencepiece" in loaded and "tokenizers" not in loaded


def test_the_remote_worker_client_and_the_serve_cli_import_no_torch() -> None:
    loaded = imported_after("import contract.remote_worker, frontend.cli, contract.step_proto")
    assert "torch" not in loaded and "grpc" in loaded


def serve_options(parser: argparse.ArgumentParser) -> set[str]:
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    serve = commands.choices["serve"]
    flags = set()
    for action in serve._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        long_flags = [o for o in action.option_strings if not o.startswith("--no-")]
        assert len(long_flags) == 1, action.option_strings
        flags.add(long_flags[0])
        assert action.dest == long_flags[0][2:].replace("-", "_")
    return flags


def test_every_serve_flag_is_exactly_one_settings_field() -> None:
    fields = leaf_fields(ServeConfig)
    assert serve_options(build_parser()) == {flag_name(name) for name in fields}
    # Defaults come from the dataclasses: parsing no flags gives the default settings.
    args = build_parser().parse_args(["serve"])
    assert settings_from_args(ServeConfig, args) == ServeConfig()


def test_every_worker_serve_flag_is_exactly_one_settings_field() -> None:
    fields = set(leaf_fields(WorkerServeConfig)) - SCHEDULER_ONLY_SETTINGS
    assert serve_options(build_worker_parser()) == {flag_name(name) for name in fields}
    args = build_worker_parser().parse_args(["serve"])
    assert settings_from_args(WorkerServeConfig, args, SCHEDULER_ONLY_SETTINGS) == (
        WorkerServeConfig()
    )


def test_worker_settings_written_as_flags_parse_back_to_the_same() -> None:
    settings = WorkerServeConfig(
        model=ModelConfig(model="/models/x", device="cpu", dtype="bfloat16", seed=3),
        cache=CacheConfig(block_size=32, kv_cache_memory=1 << 30),
        parallel=ParallelConfig(tensor_parallel_size=2, distributed_timeout=5.0),
    )
    argv = ["serve", *settings_to_argv(settings, SCHEDULER_ONLY_SETTINGS)]
    args = build_worker_parser().parse_args(argv)
    assert settings_from_args(WorkerServeConfig, args, SCHEDULER_ONLY_SETTINGS) == settings


def test_a_settings_name_is_declared_once_across_the_tree() -> None:
    def all_leaves(cls: type) -> list[str]:
        names = []
        for f in dataclasses.fields(cls):
            sub = f.default_factory
            if isinstance(sub, type) and dataclasses.is_dataclass(sub):
                names += all_leaves(sub)
            else:
                names.append(f.name)
        return names

    names = all_leaves(ServeConfig)
    assert len(names) == len(set(names)) == len(leaf_fields(ServeConfig))


def test_offline_keywords_build_the_nested_settings() -> None:
    config = EngineConfig.from_kwargs(block_size=32, max_num_seqs=8, device="cpu")
    assert (config.cache.block_size, config.scheduler.max_num_seqs) == (32, 8)
    assert config.model.device == "cpu" and config.worker.cache is config.cache
    with pytest.raises(TypeError, match="unknown settings: max_num_seq"):
        EngineConfig.from_kwargs(max_num_seq=8)


def test_from_model_dir_names_an_unknown_keyword() -> None:
    from scheduler import Engine

    with pytest.raises(TypeError, match="unknown settings: kv_blocks"):
        Engine.from_model_dir(STORIES_DIR, kv_blocks=64)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-num-seqs", "0"], "max_num_seqs must be >= 1, got 0"),
        (["--num-kv-blocks", "8", "--kv-cache-memory", "1GiB"], "at most one of num_kv_blocks"),
        (["--max-num-seqs", "64", "--max-num-batched-tokens", "32"], "must be >= max_num_seqs"),
        (["--kv-cache-memory", "lots"], "not a size in bytes"),
        (["--worker", "localhost"], "worker must be HOST:PORT, got 'localhost'"),
        (["--worker", "127.0.0.1:1", "--device", "cpu"], "device is the worker's setting"),
        (["--tensor-parallel-size", "3"], "does not divide the model's 4 KV heads"),
    ],
)
def test_bad_settings_exit_2_naming_the_setting(flags: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "frontend", "serve", *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
