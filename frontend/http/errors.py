"""Errors in OpenAI's JSON shape, with the HTTP status of each gRPC status in the README's
table: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from frontend.admission import Refused

# gRPC status name -> (HTTP status, OpenAI error type).
STATUSES = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "conflict_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "INTERNAL": (500, "server_error"),
    "UNAVAILABLE": (503, "service_unavailable_error"),
    "DEADLINE_EXCEEDED": (504, "timeout_error"),
}


class HttpError(Exception):
    """An error answered as it is: for what has no gRPC status (413, 404 of a route, 405)."""

    def __init__(
        self, status: int, message: str, error_type: str, param: str | None = None, code=None
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code


def error_response(
    status: int,
    message: str,
    error_type: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def refused_response(refused: Refused, param: str | None = None) -> JSONResponse:
    """`param`: the field as this API names it, where it differs from the engine's name."""
    status, error_type = STATUSES.get(refused.status, (500, "server_error"))
    headers = {}
    if refused.retry_after_s is not None:
        # The OpenAI SDKs wait retry-after-ms before retrying; retry-after is the standard.
        headers["retry-after-ms"] = str(refused.retry_after_ms)
        headers["retry-after"] = str(max(1, math.ceil(refused.retry_after_s)))
    if refused.status == "DEADLINE_EXCEEDED":
        # 504 is gRPC's mapping, and the OpenAI SDKs retry every 5xx: this header, which they
        # obey, stops them from sending again a request whose deadline has passed.
        headers["x-should-retry"] = "false"
    code = refused.limit or (refused.status.lower() if status >= 500 else None)
    return error_response(
        status, refused.message, error_type, param or refused.param, code, headers or None
    )


def http_error_response(error: HttpError) -> JSONResponse:
    return error_response(error.status, error.message, error.error_type, error.param, error.code)
