"""Command-line flags generated from settings dataclasses, and settings read back from them.

Every leaf field of a nested settings dataclass becomes `--field-name`, with the field's
default, its help, and its `type`/`choices`/`metavar` from the field's metadata or, failing
that, from its annotation; a bool becomes `--name` / `--no-name`. Parsing builds the same
dataclasses again, so their validation runs once, where the settings are declared.
`python -m frontend serve` and `python -m worker serve` both build their flags here; a
program may leave out (`exclude`) the leaves that mean nothing to it, which keep their
defaults. `settings_to_argv` writes settings back as flags (to start another process).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from common.settings import from_flat, leaf_fields


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_settings_flags(
    parser: argparse.ArgumentParser, cls: type, exclude: frozenset[str] = frozenset()
) -> None:
    for f, annotation in _leaves(cls):
        if f.name in exclude:
            continue
        meta = dict(f.metadata)
        meta.pop("check", None)  # the dataclass runs it once the flags are parsed
        kwargs: dict[str, Any] = {"default": f.default, "help": meta.pop("help", None)}
        kind = _scalar_type(annotation)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _with_message(meta.pop("type")) if "type" in meta else kind
        kwargs.update(meta)
        if kwargs.get("action") == "append":
            kwargs["default"] = None  # argparse appends to a list of its own
        parser.add_argument(flag_name(f.name), dest=f.name, **kwargs)


def _with_message(parse: Any) -> Any:
    """argparse shows "invalid <function> value" for a ValueError; show its message."""

    def parse_value(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"invalid value: {text!r}") from exc

    parse_value.__name__ = getattr(parse, "__name__", "value")
    return parse_value


def settings_from_args(
    cls: type, args: argparse.Namespace, exclude: frozenset[str] = frozenset()
) -> Any:
    """The settings the parsed flags say; ValueError when they do not validate."""
    names = [name for name in leaf_fields(cls) if name not in exclude]
    return from_flat(cls, **{name: getattr(args, name) for name in names})


def settings_to_argv(settings: Any, exclude: frozenset[str] = frozenset()) -> list[str]:
    """The flags that give `settings` back (`settings_from_args` of their parse); a leaf at
    its default is left out. Only for leaves whose values print as they parse."""
    argv: list[str] = []
    for f, _ in _leaves(type(settings)):
        value = _leaf_value(settings, f.name)
        if f.name in exclude or value == f.default:
            continue
        if isinstance(value, bool):
            argv.append(flag_name(f.name) if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, tuple):  # a repeatable flag
            for item in value:
                argv += [flag_name(f.name), str(item)]
        elif value is not None:
            argv += [flag_name(f.name), str(value)]
    return argv


def _leaf_value(settings: Any, name: str) -> Any:
    node = settings
    for part in leaf_fields(type(settings))[name]:
        node = getattr(node, part)
    return node


def _leaves(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, its evaluated annotation) for every leaf, depth first."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for f in dataclasses.fields(cls):
        sub = f.default_factory
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            leaves.extend(_leaves(sub))
        else:
            leaves.append((f, hints[f.name]))
    return leaves


def _scalar_type(annotation: Any) -> type:
    """int for `int | None`, and so on."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        [annotation] = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return typing.get_origin(annotation) or annotation
