"""What a refused request body gets wrong, in words a caller can act on: the field at fault
(pydantic's location, without the union branches it tried), and a lone UTF-16 surrogate
escape named as what it is (the JSON parser calls `"\\ud800"` an "unexpected end of hex
escape")."""

from __future__ import annotations

import re

_SCALAR_TYPES = {"str", "int", "float", "bool", "none"}
_ESCAPE = re.compile(rb"\\(u[0-9a-fA-F]{4}|.)", re.DOTALL)


def field_path(location: tuple[str | int, ...]) -> str:
    """`("messages", 0, "content")` -> `messages.0.content`, leaving out the union members
    pydantic names on the way (`str`, `list[int]`, `TextPart`)."""
    return ".".join(str(part) for part in location if not _is_type_tag(str(part)))


def _is_type_tag(part: str) -> bool:
    return part in _SCALAR_TYPES or "[" in part or part[:1].isupper()


def lone_surrogate(raw: bytes) -> str | None:
    """Where the body holds a `\\uD800`-`\\uDFFF` escape that is not half of a pair, said as
    a refusal's message; None when it holds none."""
    pending: re.Match[bytes] | None = None  # a high surrogate waiting for its low half
    for match in _ESCAPE.finditer(raw):
        code = _code(match)
        low = code is not None and 0xDC00 <= code <= 0xDFFF
        if pending is not None:
            if low and match.start() == pending.end():
                pending = None
                continue
            return _describe(raw, pending)
        if code is not None and 0xD800 <= code <= 0xDBFF:
            pending = match
        elif low:
            return _describe(raw, match)
    return None if pending is None else _describe(raw, pending)


def _code(match: re.Match[bytes]) -> int | None:
    escape = match.group(1)
    return int(escape[1:], 16) if len(escape) == 5 else None


def _describe(raw: bytes, match: re.Match[bytes]) -> str:
    line = raw.count(b"\n", 0, match.start()) + 1
    column = match.start() - (raw.rfind(b"\n", 0, match.start()) + 1) + 1
    escape = match.group(0).decode("ascii")
    return (
        f"the body is not valid JSON text: the escape {escape} at line {line} column {column} "
        "is half of a UTF-16 surrogate pair without its other half (a \\uD800-\\uDBFF escape "
        "must be followed by a \\uDC00-\\uDFFF one)"
    )
