"""Settings as frozen dataclasses: each field declared once, with what a command line needs
to offer it in its metadata (help, and optionally type, choices, metavar). `frontend/flags.py`
turns the fields into flags; the offline API takes the same names as keywords (`from_flat`).
Standard library only: every layer, the router included, declares its settings this way.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import field
from typing import Any

from common.checks import Check

# What every server's --log-level takes.
LOG_LEVELS = ("debug", "info", "warning", "error")


def setting(default: Any, help: str, check: Check | None = None, **flag: Any) -> Any:
    """A settings field: its default, its check (common/checks.py; `check_settings` runs it),
    and what the command line needs to offer it (help, and optionally `type`, `choices`,
    `metavar`)."""
    return field(default=default, metadata={"help": help, "check": check, **flag})


def check_settings(settings: Any) -> None:
    """Run the check of every field of `settings` that declares one (not nested ones: each
    settings dataclass checks its own fields), keeping the value each check returns."""
    for f in dataclasses.fields(settings):
        check = f.metadata.get("check")
        if check is not None:
            object.__setattr__(settings, f.name, check(f.name, getattr(settings, f.name)))


def parse_bytes(text: str) -> int:
    """`1073741824`, `512MiB`, `2G`, `1.5GB` -> bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size in bytes: {text!r}")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


def leaf_fields(cls: type) -> dict[str, tuple[str, ...]]:
    """Every setting of a nested settings dataclass, by name -> path of field names, e.g.
    {"block_size": ("cache", "block_size"), ...}. Names are unique across the tree."""
    found: dict[str, tuple[str, ...]] = {}
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            for name, path in leaf_fields(sub).items():
                if name in found:
                    raise TypeError(f"setting {name!r} is declared twice in {cls.__name__}")
                found[name] = (f.name, *path)
        else:
            found[f.name] = (f.name,)
    return found


def from_flat(cls: type, **settings: Any) -> Any:
    """Build a nested settings dataclass from flat keywords (`num_kv_blocks=256`, ...), the
    others at their defaults. An unknown keyword is a TypeError naming it."""
    paths = leaf_fields(cls)
    unknown = sorted(set(settings) - set(paths))
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(unknown)}")
    tree: dict[str, Any] = {}
    for name, value in settings.items():
        node = tree
        *parents, leaf = paths[name]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _build(cls, tree)


def _build(cls: type, tree: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        value = tree[f.name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        kwargs[f.name] = _build(sub, value) if isinstance(value, dict) and sub else value
    return cls(**kwargs)
