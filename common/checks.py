"""The checks of a value against its limits, written once: sampling parameters
(contract/sampling.py) and every layer's settings (common/settings.py) declare theirs with
these, and refuse a bad value with the same words.

A check is `(name, value) -> value kept`, raising InvalidFieldError (a ValueError) that names
the field and its limit. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


class InvalidFieldError(ValueError):
    """A value outside its limit: a request field (gRPC INVALID_ARGUMENT, HTTP 400), or a
    setting (a usage error). `param` names the field (`temperature`, `logit_bias`,
    `max_num_seqs`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


Check = Callable[[str, Any], Any]  # (name, value) -> the value to keep; raises InvalidFieldError


def integer(low: int, high: int | None = None, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> Any:
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidFieldError(name, f"{name} must be an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            limit = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise InvalidFieldError(name, f"{name} must be {limit}, got {value}")
        return value

    return check


def number(
    low: float, high: float = math.inf, low_open: bool = False, optional: bool = False
) -> Check:
    """A finite number in [low, high], or (low, high] when `low_open`."""
    opening = "(" if low_open else "["

    def check(name: str, value: Any) -> Any:
        if optional and value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidFieldError(name, f"{name} must be a finite number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidFieldError(name, f"{name} must be a finite number, got {value!r}")
        above_low = value > low if low_open else value >= low
        if not above_low or value > high:
            if high == math.inf:
                limit = f"> {low:g}" if low_open else f">= {low:g}"
            else:
                limit = f"in {opening}{low:g}, {high:g}]"
            raise InvalidFieldError(name, f"{name} must be {limit}, got {value}")
        return float(value)

    return check


def boolean(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise InvalidFieldError(name, f"{name} must be true or false, got {value!r}")
    return value


def one_of(choices: tuple[str, ...]) -> Check:
    def check(name: str, value: Any) -> Any:
        if value not in choices:
            message = f"{name} must be one of {', '.join(choices)}, got {value!r}"
            raise InvalidFieldError(name, message)
        return value

    return check
