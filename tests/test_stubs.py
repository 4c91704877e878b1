"""The committed gRPC stubs match proto/*.proto and import as a plain package."""

from __future__ import annotations

import importlib
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_committed_stubs_are_what_the_protos_generate() -> None:
    from loompb import generate

    assert generate.stale_files() == [], "run `python -m loompb.generate` and commit the result"


def test_check_command_fails_on_a_stale_stub(tmp_path, monkeypatch) -> None:
    from loompb import generate

    # A copy of the package whose serving stub lacks a field must be reported as stale.
    fake_package = tmp_path / "loompb"
    fake_package.mkdir()
    for name in generate.generated_names():
        (fake_package / name).write_bytes((generate.PACKAGE_DIR / name).read_bytes())
    stale = fake_package / "serving_pb2.pyi"
    stale.write_text(stale.read_text().replace("echo: bool", "", 1))
    monkeypatch.setattr(generate, "PACKAGE_DIR", fake_package)
    assert generate.main(["--check"]) == 1


def test_stubs_import_without_path_tricks() -> None:
    # A fresh interpreter in another folder, the repo root on its path as an install puts it:
    # the generated modules must import each other as `loompb.*`, not as top-level names.
    code = (
        "from loompb import serving_pb2, serving_pb2_grpc, worker_pb2, worker_pb2_grpc;"
        "print(serving_pb2.DESCRIPTOR.package, worker_pb2.DESCRIPTOR.package)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT / "tests",
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(REPO_ROOT)},
    )
    assert out.stdout.split() == ["loom.v1", "loom.worker.v1"]


def test_serving_contract_names() -> None:
    serving_pb2 = importlib.import_module("loompb.serving_pb2")
    service = serving_pb2.DESCRIPTOR.services_by_name["Generation"]
    assert [m.name for m in service.methods] == [
        "Generate",
        "GenerateStream",
        "GetModelInfo",
        "Tokenize",
        "Detokenize",
        "Abort",
        "ApplyChatTemplate",
        "GetLoad",
        "LoadLoraAdapter",
        "UnloadLoraAdapter",
    ]
    request = serving_pb2.ApplyChatTemplateRequest.DESCRIPTOR
    assert request.fields_by_name["add_generation_prompt"].has_presence  # unset means true
    sampling = serving_pb2.SamplingParams.DESCRIPTOR
    # Fields whose unset value must mean the documented default, not zero, have presence.
    for name in ("max_tokens", "temperature", "top_p", "top_k", "seed"):
        assert sampling.fields_by_name[name].has_presence, name
    # Unset priority means the tenant's default, not 0.
    assert serving_pb2.GenerateRequest.DESCRIPTOR.fields_by_name["priority"].has_presence
