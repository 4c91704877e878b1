"""The layers stay apart (frontend -> engine -> step contract <- worker), and every setting is
declared once: the serve flags are exactly the settings fields."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import scheduler
from common.flags import flag_name, settings_from_args, settings_to_argv
from common.settings import from_flat, leaf_fields
from frontend.cli import build_parser
from frontend.config import WORKER_SIDE_SETTINGS, ServeConfig
from scheduler.config import EngineConfig
from tests.conftest import REPO_ROOT, STORIES_DIR
from worker.cli import build_parser as build_worker_parser
from worker.config import (
    CacheConfig,
    ModelConfig,
    ParallelConfig,
    WorkerServeConfig,
    WorkerServerConfig,
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


# Which packages each package may import, and does: the README's diagram. A new arrow fails
# here until the diagram (and this table) say it should be there; so does a stale one.
ALLOWED_IMPORTS = {
    "loompb": set(),
    "common": set(),
    "modelfiles": set(),
    "contract": {"common", "loompb"},
    # serving: the worker's gRPC server refuses hostile bytes as the others do (rpc_guard).
    "worker": {"common", "contract", "modelfiles", "serving", "loompb"},
    # worker: its settings and create_worker, for the engine whose worker runs in-process.
    "scheduler": {"common", "contract", "modelfiles", "worker"},
    "serving": {"common", "loompb"},
    # client: `python -m frontend health` asks a server as any client does.
    "frontend": {"common", "contract", "modelfiles", "scheduler", "serving", "client", "loompb"},
    "router": {"common", "serving", "client", "loompb"},
    "client": {"loompb"},
    "loadtest": {"loompb"},
}
PACKAGES = [*ALLOWED_IMPORTS, "bench"]


def imports_of(path: Path, top_level_only: bool = False) -> set[str]:
    """The modules a file imports (inside functions too, unless `top_level_only`); for
    `from package import name`, both `package` and `package.name` (which may be a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def test_packages_import_exactly_what_the_diagram_allows() -> None:
    imports = {
        package: {
            module.split(".")[0]
            for path in package_files(package)
            for module in imports_of(path)
            if module.split(".")[0] in PACKAGES and module.split(".")[0] != package
        }
        for package in ALLOWED_IMPORTS
    }
    assert imports == ALLOWED_IMPORTS


def test_the_engine_reaches_the_worker_only_for_an_in_process_one() -> None:
    worker_imports = {
        module
        for path in package_files("scheduler")
        for module in imports_of(path)
        if module.split(".")[0] == "worker"
    }
    # create_worker and the worker's settings dataclasses, none of which imports torch.
    assert {module.rsplit(".", 1)[0] for module in worker_imports} <= {"worker", "worker.config"}


def test_tests_import_nothing_from_bench() -> None:
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in package_files("tests")
        if any(module.split(".")[0] == "bench" for module in imports_of(path))
    ]
    assert offenders == []


def test_bench_stays_lean() -> None:
    # One harness per kind of measurement: a new benchmark joins the module of its kind.
    assert len(list((REPO_ROOT / "bench").glob("*.py"))) <= 15


def test_the_worker_takes_only_the_rpc_guard_of_serving() -> None:
    serving_imports = {
        module
        for path in package_files("worker")
        for module in imports_of(path)
        if module.split(".")[0] == "serving"
    }
    assert serving_imports  # its server is guarded
    assert all(m.startswith("serving.rpc_guard") for m in serving_imports), serving_imports


def test_no_module_imports_itself_back_at_import_time() -> None:
    """No cycle among the imports every module runs when it is first imported."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in package_files(package):
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            name = name.removesuffix(".__init__")
            graph[name] = imports_of(path, top_level_only=True)
    graph = {name: {m for m in graph[name] if m in graph and m != name} for name in graph}
    cycles = _cycles(graph)
    assert cycles == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_engine_package_imports_no_grpc_server_code_or_torch() -> None:
    modules = sorted(f"scheduler.{m.name}" for m in pkgutil.iter_modules(scheduler.__path__))
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
    fields = set(leaf_fields(WorkerServeConfig))
    assert serve_options(build_worker_parser()) == {flag_name(name) for name in fields}
    args = build_worker_parser().parse_args(["serve"])
    assert settings_from_args(WorkerServeConfig, args) == WorkerServeConfig()


def test_worker_settings_written_as_flags_parse_back_to_the_same() -> None:
    settings = WorkerServeConfig(
        model=ModelConfig(model="/models/x", device="cpu", dtype="bfloat16", seed=3),
        cache=CacheConfig(block_size=32, kv_cache_memory=1 << 30),
        parallel=ParallelConfig(tensor_parallel_size=2, distributed_timeout=5.0),
    )
    argv = ["serve", *settings_to_argv(settings)]
    args = build_worker_parser().parse_args(argv)
    assert settings_from_args(WorkerServeConfig, args) == settings


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


def test_every_setting_of_worker_serve_is_refused_beside_worker() -> None:
    # The worker's model, cache and parallel settings, whatever they are now or later.
    worker_settings = set(leaf_fields(WorkerServeConfig)) - set(leaf_fields(WorkerServerConfig))
    assert worker_settings == WORKER_SIDE_SETTINGS
    for name in worker_settings:
        with pytest.raises(ValueError, match=f"{name} is the worker's setting"):
            from_flat(ServeConfig, worker="127.0.0.1:1", **{name: _not_default(name)})


def _not_default(name: str) -> object:
    return {"model": "/models/x", "device": "cpu", "dtype": "float32", "max_model_len": 64,
            "seed": 1, "num_threads": 2, "attention_backend": "torch", "enforce_eager": True,
            "quantization": "none",
            "block_size": 32, "num_kv_blocks": 8, "kv_cache_memory": 1 << 20,
            "tensor_parallel_size": 2, "distributed_timeout": 5.0}[name]  # fmt: skip


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
        (["--worker", "127.0.0.1:1", "--dtype", "float32"], "dtype is the worker's setting"),
        (["--worker", "127.0.0.1:1", "--enforce-eager"], "enforce_eager is the worker's setting"),
        (["--worker", "127.0.0.1:1", "--num-threads", "2"], "num_threads is the worker's setting"),
        (["--tensor-parallel-size", "3"], "does not divide the model's 4 KV heads"),
    ],
)
@pytest.mark.server
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


@pytest.mark.parametrize("package", [*PACKAGES, "frontend/http", "worker/attention"])
def test_each_package_docstring_lists_its_files(package: str) -> None:
    """The package's docstring is where its files are described: every module is named."""
    directory = REPO_ROOT / package
    docstring = ast.get_docstring(ast.parse((directory / "__init__.py").read_text())) or ""
    entries = {path.name for path in directory.glob("*.py") if path.name != "__init__.py"}
    entries |= {f"{path.name}/" for path in directory.iterdir() if (path / "__init__.py").exists()}
    generated = {name for name in entries if name.endswith(("_pb2.py", "_pb2_grpc.py"))}
    missing = sorted(name for name in entries - generated if name not in docstring)
    assert missing == []


def test_the_readme_table_is_the_allowed_table() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("| package |", readme.index("## Architecture"))
    table = readme[start : readme.index("\n\n", start)]
    shown = {}
    for row in table.splitlines()[2:]:
        packages, imports = row.strip("|").split("|")
        for package in re.findall(r"`(\w+)`", packages):
            shown[package] = set(re.findall(r"`(\w+)`", imports))
    everywhere = {"common", "loompb"}
    expected = {
        package: allowed - everywhere
        for package, allowed in ALLOWED_IMPORTS.items()
        if package not in everywhere
    }
    assert shown == expected
