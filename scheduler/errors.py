"""Errors the engine raises at admission, beside the ValueError of invalid input."""

from __future__ import annotations


class CapacityError(Exception):
    """The server cannot take this request now or ever (gRPC RESOURCE_EXHAUSTED): the waiting
    queue is full, or the request could never fit in the KV cache."""


class DuplicateRequestError(ValueError):
    """A live request already has this id (gRPC ALREADY_EXISTS)."""


class LoraNotFoundError(LookupError):
    """A request or an unload names a LoRA adapter the engine does not serve (gRPC
    NOT_FOUND, HTTP 404)."""
