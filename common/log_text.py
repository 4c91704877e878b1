"""Text a caller chose (a request id, a tenant name, an error quoting its input), made safe to
put in a log line: every character Python does not call printable (line breaks, ANSI escapes,
bidirectional overrides such as U+202E, other control and format characters) is written as
its escape (`\\n`, `\\x1b`, `\\u202e`), and so is the backslash, so nothing a caller sends can
end a log line, forge the next one, restyle a terminal or reorder what follows. Long text is
cut short, saying how much was left out."""

from __future__ import annotations

MAX_LOGGED_CHARS = 200


def loggable(text: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """`text` (any object, as str() writes it) escaped for a log line, at most `limit`
    characters of it."""
    value = str(text)
    shown = value[:limit]
    escaped = "".join(_escape(char) for char in shown)
    if len(value) > limit:
        escaped += f"...({len(value) - limit} more characters)"
    return escaped


def _escape(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if char.isprintable():
        return char
    return repr(char)[1:-1]  # '\n', '\x1b', '\u202e', '\U000e0001'
