"""Tenants: who may call, found by the SHA-256 of their API key, with their weight, default
priority and quotas. Read from a TOML tenants file (`serve --tenants FILE`) or built from a
plaintext `--api-keys` file; frontend-agnostic (no grpc), so any server in front of the
engine authenticates the same way.

    [tenants.acme]
    api_key_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    weight = 2.0                     # share of the engine under contention (default 1)
    priority = 0                     # default request priority (default 0)
    deadline_ms = 30000              # default deadline of its requests (default: none)
    max_concurrent_requests = 64     # sequences running + waiting
    max_tokens_per_minute = 200000   # prompt + generated tokens, token bucket
    max_tokens_per_request = 4096    # a call's prompts + max_tokens per sequence
    loras = ["sql", "chat"]          # LoRA adapters it may use (default: any)
    default_lora = "sql"             # the adapter of its requests that name none
    admin = false                    # may load and unload LoRA adapters
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
# Tenant names become metric labels and log fields: keep them short and plain.
TENANT_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
KEY_HASH_FIELD = "api_key_sha256"
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
LIMIT_FIELDS = ("max_concurrent_requests", "max_tokens_per_minute", "max_tokens_per_request")
_LORA_FIELDS = ("loras", "default_lora", "admin")


@dataclass(slots=True, frozen=True)
class Tenant:
    name: str
    weight: float = 1.0
    priority: int = 0  # for requests that bring none
    max_concurrent_requests: int | None = None  # None: no limit
    max_tokens_per_minute: int | None = None
    max_tokens_per_request: int | None = None
    loras: tuple[str, ...] | None = None  # the LoRA adapters it may use; None: any
    default_lora: str | None = None  # for its requests that name no adapter
    admin: bool = False  # may load and unload adapters at run time
    deadline_ms: int | None = None  # for requests that bring none; None: no deadline

    @property
    def has_quotas(self) -> bool:
        return any(getattr(self, name) is not None for name in LIMIT_FIELDS)


def hash_key(key: str) -> str:
    """The hex SHA-256 of an API key, as the tenants file stores it."""
    return hashlib.sha256(key.encode()).hexdigest()


def hash_line(key: str) -> str:
    """The tenants-file line for one key (`python -m frontend hash-key`)."""
    return f'{KEY_HASH_FIELD} = ["{hash_key(key)}"]'


class TenantDirectory:
    """The tenants of one file, and the key hashes that name them."""

    def __init__(self, tenants: Mapping[str, Tenant], key_hashes: Mapping[str, str]) -> None:
        self.tenants = dict(tenants)
        # Digests, not hex text: what the constant-time comparison runs over.
        self._digests = [(bytes.fromhex(h), name) for h, name in key_hashes.items()]

    def __len__(self) -> int:
        return len(self.tenants)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self.tenants.values())

    @property
    def num_keys(self) -> int:
        return len(self._digests)

    def weights(self) -> dict[str, float]:
        return {tenant.name: tenant.weight for tenant in self}

    def find_key(self, key: str) -> Tenant | None:
        """The tenant whose key this is. Every stored hash is compared, in constant time,
        so the time taken says nothing about which hash came close."""
        digest = hashlib.sha256(key.encode()).digest()
        found = None
        for known, name in self._digests:
            if hmac.compare_digest(known, digest):
                found = name
        return None if found is None else self.tenants[found]


def directory_from_api_keys(api_keys: Mapping[str, str]) -> TenantDirectory:
    """`--api-keys`: {key: tenant}, a tenant per name with default settings. Only the hashes
    are kept."""
    tenants = {name: Tenant(name) for name in api_keys.values()}
    return TenantDirectory(tenants, {hash_key(key): name for key, name in api_keys.items()})


def load_tenants(path: str | Path) -> TenantDirectory:
    """Read a tenants file; ValueError names the file, the line and the field at fault."""
    text = Path(path).read_text()
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    parser = _FileParser(str(path), text)
    unknown = sorted(set(document) - {"tenants"})
    if unknown:
        raise parser.error(None, unknown[0], "unknown table or key (expected [tenants.NAME])")
    tables = document.get("tenants")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{path}: no tenants (expected [tenants.NAME] tables)")
    tenants: dict[str, Tenant] = {}
    key_hashes: dict[str, str] = {}
    for name, table in tables.items():
        tenant, hashes = parser.tenant(name, table)
        for key_hash in hashes:
            if key_hash in key_hashes:
                raise parser.error(
                    name, KEY_HASH_FIELD, f"key hash also given to tenant {key_hashes[key_hash]!r}"
                )
            key_hashes[key_hash] = name
        tenants[name] = tenant
    return TenantDirectory(tenants, key_hashes)


def reload_tenants_file(path: str | Path | None) -> TenantDirectory | None:
    """SIGHUP's read of the tenants file: the new directory, or None (logged) when there is no
    file to reload or it is bad, so that the caller keeps the tenants it has."""
    if path is None:
        log.warning("SIGHUP: no --tenants file to reload")
        return None
    try:
        directory = load_tenants(path)
    except (OSError, ValueError) as exc:
        log.error("tenants not reloaded, keeping the previous ones: %s", exc)
        return None
    log.info(
        "tenants reloaded from %s: %d tenants, %d keys", path, len(directory), directory.num_keys
    )
    return directory


class _FileParser:
    """Checks each tenant table; errors point at the line where the field is written."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def tenant(self, name: str, table: Any) -> tuple[Tenant, list[str]]:
        if not TENANT_PATTERN.fullmatch(name):
            raise self.error(name, None, f"tenant name must match {TENANT_PATTERN.pattern}")
        if not isinstance(table, dict):
            raise self.error(name, None, "must be a table ([tenants.NAME])")
        known = {KEY_HASH_FIELD, "weight", "priority", "deadline_ms", *LIMIT_FIELDS,
                 *_LORA_FIELDS}  # fmt: skip
        for field in table:
            if field not in known:
                raise self.error(name, field, f"unknown field (known: {', '.join(sorted(known))})")
        if KEY_HASH_FIELD not in table:
            raise self.error(name, None, f"{KEY_HASH_FIELD} is required")
        hashes = self._key_hashes(name, table[KEY_HASH_FIELD])
        weight = table.get("weight", 1.0)
        if not _is_number(weight) or not (math.isfinite(weight) and weight > 0):
            raise self.error(name, "weight", f"must be a number > 0, got {weight!r}")
        priority = table.get("priority", 0)
        if not _is_int(priority):
            raise self.error(name, "priority", f"must be an integer, got {priority!r}")
        limits = {}
        for field in (*LIMIT_FIELDS, "deadline_ms"):
            value = table.get(field)
            if value is not None and (not _is_int(value) or value < 1):
                raise self.error(name, field, f"must be an integer >= 1, got {value!r}")
            limits[field] = value
        loras = self._lora_fields(name, table)
        return Tenant(name, float(weight), priority, **limits, **loras), hashes

    def _lora_fields(self, name: str, table: dict) -> dict[str, Any]:
        loras = table.get("loras")
        if loras is not None and (
            not isinstance(loras, list) or not all(isinstance(x, str) and x for x in loras)
        ):
            raise self.error(name, "loras", f"must be a list of adapter names, got {loras!r}")
        default = table.get("default_lora")
        if default is not None and (not isinstance(default, str) or not default):
            raise self.error(name, "default_lora", f"must be an adapter name, got {default!r}")
        if default is not None and loras is not None and default not in loras:
            raise self.error(name, "default_lora", f"{default!r} is not one of its loras")
        admin = table.get("admin", False)
        if not isinstance(admin, bool):
            raise self.error(name, "admin", f"must be true or false, got {admin!r}")
        return {
            "loras": None if loras is None else tuple(loras),
            "default_lora": default,
            "admin": admin,
        }

    def _key_hashes(self, name: str, value: Any) -> list[str]:
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values:
            raise self.error(name, KEY_HASH_FIELD, "must be a non-empty list of hex SHA-256s")
        hashes = []
        for item in values:
            text = item.lower() if isinstance(item, str) else item
            if not isinstance(text, str) or not _HEX_SHA256.fullmatch(text):
                raise self.error(
                    name,
                    KEY_HASH_FIELD,
                    f"{str(item)[:80]!r} is not a hex SHA-256 (64 hex digits; "
                    "`python -m frontend hash-key` prints one)",
                )
            hashes.append(text)
        return hashes

    def error(self, tenant: str | None, field: str | None, message: str) -> ValueError:
        where = ".".join(part for part in ("tenants", tenant, field) if part)
        if tenant is None:
            where = field or "tenants"
        line = self._line_of(tenant, field)
        location = f"{self.path}:{line}" if line else self.path
        return ValueError(f"{location}: {where}: {message}")

    def _line_of(self, tenant: str | None, field: str | None) -> int | None:
        """The 1-based line of `field` in `[tenants.<tenant>]` (or of the header itself)."""
        section: str | None = None
        header_line = None
        for number, raw in enumerate(self.lines, start=1):
            line = raw.split("#", 1)[0].strip()
            if line.startswith("["):
                section = line.strip("[] ").replace('"', "").replace("'", "")
                if tenant is not None and section == f"tenants.{tenant}":
                    header_line = number
                    if field is None:
                        return number
                elif tenant is None and section.split(".")[0] == field:
                    return number  # an unknown top-level table
                continue
            key = line.split("=", 1)[0].strip().strip("\"'")
            in_section = section == (None if tenant is None else f"tenants.{tenant}")
            if field is not None and "=" in line and key == field and in_section:
                return number
        return header_line


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
