"""Loading and unloading LoRA adapters at run time, for the gRPC and the HTTP admin calls
alike: who may (with a tenants file, a tenant marked `admin = true`; without one, every
caller, as every call is trusted then), and each outcome as the status to answer."""

from __future__ import annotations

import logging

from common.log_text import loggable
from frontend.admission import Refused
from modelfiles.lora_files import LoraError
from scheduler.errors import LoraNotFoundError
from scheduler.lora_registry import LoraExistsError, LoraRegistry
from serving.auth import Authenticator
from serving.tenants import Tenant

log = logging.getLogger("loom.lora")


class LoraAdmin:
    def __init__(self, registry: LoraRegistry, authenticator: Authenticator) -> None:
        self.registry = registry
        self.authenticator = authenticator

    def load(self, tenant: Tenant, name: str, path: str) -> None:
        """Refused: PERMISSION_DENIED, ALREADY_EXISTS, INVALID_ARGUMENT (the files)."""
        self._check_admin(tenant)
        if not name or not path:
            raise Refused("INVALID_ARGUMENT", "lora_name and lora_path are required")
        try:
            ref = self.registry.load(name, path)
        except LoraExistsError as exc:
            raise Refused("ALREADY_EXISTS", str(exc)) from None
        except (LoraError, OSError) as exc:
            raise Refused("INVALID_ARGUMENT", str(exc)) from None
        log.info("LoRA adapter %s loaded from %s (id %d) by %s",
                 loggable(name), loggable(path), ref.lora_id, tenant.name)  # fmt: skip

    def unload(self, tenant: Tenant, name: str) -> None:
        """Refused: PERMISSION_DENIED, NOT_FOUND."""
        self._check_admin(tenant)
        try:
            self.registry.unload(name)
        except LoraNotFoundError as exc:
            raise Refused("NOT_FOUND", str(exc)) from None
        log.info("LoRA adapter %s unloaded by %s", loggable(name), tenant.name)

    def visible(self, tenant: Tenant) -> list[str]:
        """The adapters served that the tenant may use."""
        names = self.registry.names()
        return names if tenant.loras is None else [n for n in names if n in tenant.loras]

    def _check_admin(self, tenant: Tenant) -> None:
        if self.authenticator.enabled and not tenant.admin:
            raise Refused(
                "PERMISSION_DENIED",
                f"tenant {tenant.name!r} may not load or unload adapters (admin = true in "
                "the tenants file)",
            )
