"""Regenerate the committed gRPC stubs from proto/*.proto.

    python -m loompb.generate          # rewrite loompb/*_pb2*.py(i)
    python -m loompb.generate --check  # exit 1 when the committed stubs are stale

The .proto files are compiled with `-Iloompb=proto`, so the generated modules import each
other as `from loompb import serving_pb2` and need no sys.path tricks. Needs grpcio-tools
(in the `test` extra); the stubs themselves need only grpcio and protobuf.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROTO_DIR = PACKAGE_DIR.parent / "proto"
# Each .proto file gives three modules: messages, their type stubs, and the service classes.
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generated_names() -> list[str]:
    return [p.stem + suffix for p in proto_files() for suffix in SUFFIXES]


def generate(out_root: Path) -> list[Path]:
    """Compile every proto file into `out_root/loompb/`; return the files written."""
    from grpc_tools import protoc  # a build-time tool: imported only when generating

    (out_root / "loompb").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-Iloompb={PROTO_DIR}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(f"{PROTO_DIR / p.name}" for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out_root / "loompb" / name for name in generated_names()]


def stale_files() -> list[str]:
    """Names of committed stubs that differ from what the proto files generate now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = PACKAGE_DIR / path.name
            if not committed.exists() or committed.read_bytes() != path.read_bytes():
                stale.append(path.name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loompb.generate", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale stubs: {', '.join(stale)}; run `python -m loompb.generate`")
            return 1
        print("stubs are up to date")
        return 0
    for path in generate(PACKAGE_DIR.parent):
        print(f"wrote {path.relative_to(PACKAGE_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
