"""Find which tensor a truncated `torch.save` file cuts off, to name it in the error.

A torch.save file is a zip whose directory sits at the end, so a cut file cannot be opened.
Its entries are still readable front to back: `<archive>/data.pkl` first (tensor names and
storage sizes), then one `<archive>/data/<key>` entry per storage. The first storage whose
bytes run past the end of the file is the one cut short. Only the error path uses this.
"""

from __future__ import annotations

import io
import mmap
import pickle
import struct
from pathlib import Path
from typing import Any

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")  # zip local file header, 30 bytes
_LOCAL_SIGNATURE = 0x04034B50
_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1,
}  # fmt: skip


class _StorageRef:
    def __init__(self, key: str, num_bytes: int) -> None:
        self.key, self.num_bytes = key, num_bytes


class _Skeleton(pickle.Unpickler):
    """Reads the structure of data.pkl without building a tensor or importing a class."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _ELEMENT_SIZES:
            return name
        if module == "collections" and name == "OrderedDict":
            return dict
        return _first_argument  # _rebuild_tensor_v2, _rebuild_parameter: keep the storage

    def persistent_load(self, pid: Any) -> _StorageRef:
        _, storage_type, key, _, numel = pid
        return _StorageRef(str(key), numel * _ELEMENT_SIZES.get(storage_type, 1))


def _first_argument(*args: Any, **_: Any) -> Any:
    return args[0] if args else None


def first_cut_tensor(path: Path) -> str | None:
    """Name of the first tensor whose bytes the file lacks; None when that cannot be told."""
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _first_cut(data)
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, struct.error):
        return None


def _first_cut(data: mmap.mmap) -> str | None:
    fields = _LOCAL_HEADER.unpack_from(data, 0)
    if fields[0] != _LOCAL_SIGNATURE:
        return None
    name_len, extra_len = fields[9], fields[10]
    pkl_name = bytes(data[30 : 30 + name_len])
    if not pkl_name.endswith(b"/data.pkl"):
        return None
    prefix = pkl_name[: -len(b"data.pkl")]
    state = _Skeleton(io.BytesIO(data[30 + name_len + extra_len :])).load()
    if not isinstance(state, dict):
        return None
    refs = {name: ref for name, ref in state.items() if isinstance(ref, _StorageRef)}
    ends = {name: _entry_end(data, prefix + b"data/" + ref.key.encode(), ref.num_bytes)
            for name, ref in refs.items()}  # fmt: skip
    cut = [(end, name) for name, end in ends.items() if end > len(data)]
    return min(cut)[1] if cut else None


def _entry_end(data: mmap.mmap, entry_name: bytes, num_bytes: int) -> int:
    """Offset where the entry's data ends; past the end of the file when it is not there."""
    start = data.find(entry_name)
    while start >= 30:
        header = start - 30
        fields = _LOCAL_HEADER.unpack_from(data, header)
        # The name must fill the header's name field: "data/1" also matches inside "data/10".
        if fields[0] == _LOCAL_SIGNATURE and fields[9] == len(entry_name):
            return start + len(entry_name) + fields[10] + num_bytes
        start = data.find(entry_name, start + 1)
    return 1 << 62
