"""Errors the engine raises at admission, beside the ValueError of invalid input."""

from __future__ import annotations


class CapacityError(Exception):
    """The server cannot take this request now or ever (gRPC RESOURCE_EXHAUSTED): the waiting
    queue is full, or the request could never fit in the KV cache."""


class DuplicateRequestError(ValueError):
    """A live request already has this id (gRPC ALREADY_EXISTS)."""


class InvalidFieldError(ValueError):
    """A request field outside its limit (gRPC INVALID_ARGUMENT, HTTP 400); `param` names the
    field as the engine knows it (`temperature`, `logit_bias`, `prompt`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
