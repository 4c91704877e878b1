"""The `tenant` label a tenant's metric series carry, so that callers cannot grow /metrics
without bound nor read tenant names off it where the operator does not want them published
(`--metrics-tenant-labels`):

- `file` (the default): a tenant of the tenants file (or of --api-keys) by its name, any other
  (one that left the file with requests still running) as `other`. On a server without keys,
  where callers name their own tenant in `x-loom-tenant`, the first `MAX_NAMED_CALLERS`
  names get a label of their own and every later one is `other`.
- `none`: every tenant's series are one series, `all`: no tenant name is published.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

LABEL_MODES = ("file", "none")
OTHER = "other"
ALL = "all"
# A tenant's series take ~9 KB of /metrics once it has finished requests (four histograms of
# ~20 buckets) beside 4.5 KB for the rest; 8 named callers and `other` keep a keyless server's
# page under 100 KB whatever the callers send (87 KB after 1,000 names; tests/server/
# test_metrics_labels.py sends 1,000 names).
MAX_NAMED_CALLERS = 8


class TenantLabels:
    """Thread-safe: the engine loop asks for labels while a reload may change the file."""

    def __init__(self, mode: str = "file") -> None:
        if mode not in LABEL_MODES:
            raise ValueError(f"metrics_tenant_labels must be one of {LABEL_MODES}, got {mode!r}")
        self.mode = mode
        self._lock = threading.Lock()
        self._listed: frozenset[str] | None = None  # a file's tenants; None: callers name theirs
        self._callers: set[str] = set()  # named callers with a label of their own (no file)

    def set_listed(self, names: Iterable[str] | None) -> set[str]:
        """The tenants of the (re)loaded file, or None for a server without one. Returns the
        labels no tenant carries any more, whose series should go."""
        with self._lock:
            before = self._labels()
            self._listed = None if names is None else frozenset(names)
            if self._listed is not None:
                self._callers.clear()
            return before - self._labels()

    def label(self, tenant: str) -> str:
        if self.mode == "none":
            return ALL
        with self._lock:
            if self._listed is not None:
                return tenant if tenant in self._listed else OTHER
            if tenant in self._callers:
                return tenant
            if len(self._callers) < MAX_NAMED_CALLERS and tenant != OTHER:
                self._callers.add(tenant)
                return tenant
            return OTHER

    def known(self) -> list[str]:
        """The labels to show at 0 before their tenants send anything: a file's tenants."""
        if self.mode == "none":
            return [ALL]
        with self._lock:
            return sorted(self._listed or ())

    def _labels(self) -> set[str]:
        if self.mode == "none":
            return {ALL}
        named = self._callers if self._listed is None else self._listed
        return {*named, OTHER}
