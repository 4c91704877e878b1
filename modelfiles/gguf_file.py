"""A GGUF file's header and tensor index, read straight from a memory map (numpy only, no
torch), so the tokenizer side and the worker share it.

The header is walked once: scalars become Python values, numeric arrays are skipped by their
byte length and read with numpy only when asked for, and string arrays (the vocabulary and
the merges, tens of thousands of entries) are skipped by their length prefixes and decoded
only when the tokenizer asks. `read_gguf` keeps the last file it parsed, so the tokenizer and
the weights of one model cost one parse. Tensor data are views of the read-only map.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelfiles.model_source import UnreadableModelError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# Large arrays read only when asked for (the tokenizer's vocabulary).
VOCAB_ARRAYS = (
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
)

# GGML tensor types: id -> (name, values per block, bytes per block), as ggml numbers them.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
}  # fmt: skip

# Metadata value types: id -> numpy dtype (little-endian); 7 bool, 8 string, 9 array.
_NUMERIC = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4",
            10: "<u8", 11: "<i8", 12: "<f8", 7: "<u1"}  # fmt: skip
_STRING, _ARRAY, _BOOL = 8, 9, 7


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type_name: str  # GGML's name (F32, Q4_K, ...); "type N" for a number ggml does not have
    shape: tuple[int, ...]  # outermost first, as Meta and torch order them
    offset: int  # from the start of the file
    nbytes: int  # -1 when the type is unknown


@dataclass(frozen=True)
class _ArrayAt:
    """Where an array's elements start, their type and count: read when asked for."""

    offset: int
    kind: int
    count: int


@dataclass
class GGUFFile:
    path: Path
    version: int
    data: np.ndarray  # uint8 memory map of the whole file, read-only
    tensors: dict[str, GGUFTensor]
    _fields: dict[str, Any] = field(repr=False)

    def metadata(self, with_vocab: bool = False) -> dict[str, Any]:
        """Every key of the header with its value (arrays as lists). The vocabulary arrays
        are left out unless `with_vocab`."""
        out: dict[str, Any] = {}
        for name, value in self._fields.items():
            if name in VOCAB_ARRAYS and not with_vocab:
                continue
            out[name] = self._value(name, value)
        return out

    def tensor_bytes(self, tensor: GGUFTensor) -> np.ndarray:
        """The tensor's bytes: a read-only view of the map."""
        return self.data[tensor.offset : tensor.offset + tensor.nbytes]

    def _value(self, name: str, value: Any) -> Any:
        if not isinstance(value, _ArrayAt):
            return value
        try:
            return _read_array(self.data, value)
        except (UnicodeDecodeError, ValueError) as exc:
            message = f"{self.path}: cannot read metadata key {name} ({exc})"
            raise UnreadableModelError(message) from exc


def _read_array(data: np.ndarray, at: _ArrayAt) -> list[Any]:
    if at.kind in _NUMERIC:
        values = np.frombuffer(data, _NUMERIC[at.kind], at.count, at.offset)
        return values.astype(bool).tolist() if at.kind == _BOOL else values.tolist()
    if at.kind == _STRING:
        buffer = memoryview(data)
        out = []
        pos = at.offset
        for _ in range(at.count):
            (length,) = struct.unpack_from("<Q", buffer, pos)
            out.append(str(buffer[pos + 8 : pos + 8 + length], "utf-8"))
            pos += 8 + length
        return out
    raise ValueError(f"arrays of type {at.kind} are not read")


class _Cursor:
    """Reads the header's little-endian values in order."""

    def __init__(self, data: np.ndarray) -> None:
        self.buffer = memoryview(data)
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.buffer, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        end = self.pos + length
        if end > len(self.buffer):
            raise ValueError("a string runs past the end of the file")
        text = str(self.buffer[self.pos : end], "utf-8")
        self.pos = end
        return text

    def skip_strings(self, count: int) -> None:
        buffer, pos, size = self.buffer, self.pos, len(self.buffer)
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            pos += 8 + unpack(buffer, pos)[0]
            if pos > size:
                raise ValueError("a string array runs past the end of the file")
        self.pos = pos

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item_kind, count = self.unpack("<I"), self.unpack("<Q")
            at = _ArrayAt(self.pos, item_kind, count)
            if item_kind in _NUMERIC:
                self.pos += count * np.dtype(_NUMERIC[item_kind]).itemsize
                if self.pos > len(self.buffer):
                    raise ValueError("an array runs past the end of the file")
            elif item_kind == _STRING:
                self.skip_strings(count)
            elif item_kind == _ARRAY:  # arrays of arrays: read now (rare and small)
                return [self.value(_ARRAY) for _ in range(count)]
            else:
                raise ValueError(f"unknown array element type {item_kind}")
            return at
        if kind not in _NUMERIC:
            raise ValueError(f"unknown value type {kind}")
        value = np.frombuffer(self.buffer, _NUMERIC[kind], 1, self.pos)[0].item()
        self.pos += np.dtype(_NUMERIC[kind]).itemsize
        return bool(value) if kind == _BOOL else value


def _parse(path: Path) -> GGUFFile:
    data = np.memmap(path, dtype=np.uint8, mode="r")
    cur = _Cursor(data)
    if bytes(cur.buffer[:4]) != GGUF_MAGIC:
        raise ValueError("no GGUF magic")
    cur.pos = 4
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (Loom reads 2 and 3)")
    num_tensors, num_fields = cur.unpack("<Q"), cur.unpack("<Q")
    fields: dict[str, Any] = {}
    for _ in range(num_fields):
        name = cur.string()
        fields[name] = cur.value(cur.unpack("<I"))
    infos = []
    for _ in range(num_tensors):
        name = cur.string()
        dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
        infos.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        raise ValueError(f"general.alignment is {alignment!r}")
    start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, GGUFTensor] = {}
    for name, dims, type_id, offset in infos:
        type_name, block_values, block_bytes = GGML_TYPES.get(type_id, (f"type {type_id}", 0, 0))
        values = int(np.prod(dims, dtype=np.int64)) if dims else 1
        nbytes = values // block_values * block_bytes if block_values else -1
        at = start + offset
        if nbytes >= 0 and at + nbytes > data.size:
            raise ValueError(f"tensor {name} runs past the end of the file")
        tensors[name] = GGUFTensor(name, type_name, tuple(reversed(dims)), at, nbytes)
    return GGUFFile(path, version, data, tensors, fields)


_lock = threading.Lock()
_last: tuple[tuple[Any, ...], GGUFFile] | None = None


def read_gguf(path: str | Path) -> GGUFFile:
    """The parsed file; the last one parsed is kept (keyed by the file's identity and
    modification time), so the tokenizer and the weights of one model share a parse."""
    global _last
    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with _lock:
            if _last is not None and _last[0] == key:
                return _last[1]
            parsed = _parse(path)
            _last = (key, parsed)
            return parsed
    except (ValueError, struct.error, OSError, UnicodeDecodeError) as exc:
        raise UnreadableModelError(
            f"{path}: cannot read the GGUF file, it is truncated or corrupt ({exc})"
        ) from exc
