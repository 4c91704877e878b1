"""Who is calling: API keys to tenants, or the tenant a trusted client names.

With `--api-keys FILE` (lines `KEY TENANT`, `#` comments), every call must carry
`authorization: Bearer KEY` and runs as that key's tenant. Without it, the server trusts
the caller (it listens on loopback by default) and takes the tenant from `x-loom-tenant`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from pathlib import Path

import grpc

DEFAULT_TENANT = "default"
TENANT_HEADER = "x-loom-tenant"
# Tenant names become metric labels and log fields: keep them short and plain.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class AuthError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_api_keys(path: str | Path) -> dict[str, str]:
    """Read `KEY TENANT` lines into {key: tenant}; refuses malformed lines and repeated keys."""
    keys: dict[str, str] = {}
    for line_no, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{line_no}: expected `KEY TENANT`, got {len(parts)} fields")
        key, tenant = parts
        if not TENANT_PATTERN.fullmatch(tenant):
            raise ValueError(f"{path}:{line_no}: tenant must match {TENANT_PATTERN.pattern}")
        if key in keys:
            raise ValueError(f"{path}:{line_no}: key repeated")
        keys[key] = tenant
    if not keys:
        raise ValueError(f"{path}: no API keys")
    return keys


class Authenticator:
    def __init__(self, api_keys: dict[str, str] | None = None) -> None:
        self._api_keys = dict(api_keys) if api_keys else None

    @property
    def enabled(self) -> bool:
        return self._api_keys is not None

    def tenant(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The caller's tenant, or AuthError with the gRPC status to answer."""
        headers = {key.lower(): value for key, value in metadata or ()}
        named = headers.get(TENANT_HEADER)
        if isinstance(named, bytes):
            named = named.decode(errors="replace")
        if self._api_keys is None:
            if named is None:
                return DEFAULT_TENANT
            if not TENANT_PATTERN.fullmatch(named):
                raise AuthError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"{TENANT_HEADER} must match {TENANT_PATTERN.pattern}, got {named[:80]!r}",
                )
            return named
        tenant = self._tenant_of_key(headers.get("authorization"))
        if named is not None and named != tenant:
            raise AuthError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this API key belongs to another tenant than {TENANT_HEADER} names",
            )
        return tenant

    def _tenant_of_key(self, header: str | bytes | None) -> str:
        assert self._api_keys is not None
        if isinstance(header, bytes):
            header = header.decode(errors="replace")
        if not header:
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "missing `authorization: Bearer <API key>`"
            )
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError(
                grpc.StatusCode.UNAUTHENTICATED, "authorization must be `Bearer <API key>`"
            )
        key = key.strip()
        # Compare against every key in constant time so timing does not leak key prefixes.
        tenant = None
        for known, known_tenant in self._api_keys.items():
            if hmac.compare_digest(known.encode(), key.encode()):
                tenant = known_tenant
        if tenant is None:
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        return tenant
