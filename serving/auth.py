"""Who is calling: the tenant of an API key, or the tenant a trusted client names.

With a tenant directory (`--tenants FILE`, or `--api-keys FILE` with lines `KEY TENANT`),
every call must carry `authorization: Bearer KEY` and runs as that key's tenant. Without one,
the server trusts the caller (it listens on loopback by default) and takes the tenant from
`x-loom-tenant`. Headers are gRPC metadata pairs or an HTTP header mapping alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from serving.tenants import DEFAULT_TENANT, TENANT_PATTERN, Tenant, TenantDirectory

TENANT_HEADER = "x-loom-tenant"
Headers = Iterable[tuple[str, str | bytes]] | Mapping[str, str | bytes] | None

__all__ = ["DEFAULT_TENANT", "TENANT_HEADER", "AuthError", "Authenticator", "load_api_keys"]


class AuthError(Exception):
    """`code` is the gRPC status name: UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT
    (an HTTP server maps them to 401, 403 and 400)."""

    def __init__(self, code: str, message: str) -> None:
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
    def __init__(self, directory: TenantDirectory | None = None) -> None:
        self.directory = directory

    @property
    def enabled(self) -> bool:
        return self.directory is not None

    def replace(self, directory: TenantDirectory) -> None:
        """A reloaded tenants file: the next call sees it; calls admitted keep going."""
        self.directory = directory

    def authenticate(self, headers: Headers) -> Tenant:
        """The caller's tenant, or AuthError with the status to answer."""
        pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
        found = {key.lower(): _text(value) for key, value in pairs}
        named = found.get(TENANT_HEADER)
        directory = self.directory  # one read: a reload swaps it whole
        if directory is None:
            if named is None:
                return Tenant(DEFAULT_TENANT)
            if not TENANT_PATTERN.fullmatch(named):
                raise AuthError(
                    "INVALID_ARGUMENT",
                    f"{TENANT_HEADER} must match {TENANT_PATTERN.pattern}, got {named[:80]!r}",
                )
            return Tenant(named)
        tenant = _tenant_of_key(directory, found.get("authorization"))
        if named is not None and named != tenant.name:
            raise AuthError(
                "PERMISSION_DENIED",
                f"this API key belongs to another tenant than {TENANT_HEADER} names",
            )
        return tenant


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _tenant_of_key(directory: TenantDirectory, header: str | None) -> Tenant:
    if not header:
        raise AuthError("UNAUTHENTICATED", "missing `authorization: Bearer <API key>`")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("UNAUTHENTICATED", "authorization must be `Bearer <API key>`")
    tenant = directory.find_key(key.strip())
    if tenant is None:
        raise AuthError("UNAUTHENTICATED", "unknown API key")
    return tenant
