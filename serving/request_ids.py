"""What a caller may name a request: 1 to 128 visible ASCII characters, `!` to `~` (letters,
digits and punctuation: what an HTTP header value such as vLLM's `X-Request-Id` holds, less
spaces and control characters). UUIDs, ULIDs, trace ids and `cmpl-...` ids fit; a line break,
an ANSI escape or U+202E cannot reach a log line inside one."""

from __future__ import annotations

import re

MAX_REQUEST_ID_LENGTH = 128
REQUEST_ID_CHARACTERS = "visible ASCII ('!' to '~')"
_ALLOWED = re.compile(r"[!-~]*")


def check_request_id(value: str, name: str = "request_id") -> None:
    """Raises ValueError naming the rule and what broke it; `""` is the caller's to refuse
    or allow (Generate names a request that brings none)."""
    if len(value) > MAX_REQUEST_ID_LENGTH:
        raise ValueError(
            f"{name} must be at most {MAX_REQUEST_ID_LENGTH} characters, got {len(value)}"
        )
    match = _ALLOWED.match(value)
    if match.end() < len(value):
        position = match.end()
        raise ValueError(
            f"{name} must be {REQUEST_ID_CHARACTERS} characters only, got "
            f"{value[position]!r} at position {position}"
        )


def check_abort_ids(request_ids: list[str]) -> None:
    """The ids an Abort call names: each one 1 character or more, as check_request_id says."""
    for request_id in request_ids:
        if not request_id:
            raise ValueError("request_ids must not hold an empty id")
        check_request_id(request_id, "request_ids")
