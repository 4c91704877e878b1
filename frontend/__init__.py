"""Loom's servers in front of the engine: the gRPC service and the OpenAI-compatible HTTP API
(frontend/http), auth, metrics, the asyncio bridge to the engine loop, and the CLI behind
`python -m frontend serve`.

Names are imported on first use, so the engine-free modules (auth, tenants, quotas, tls,
server_config) load without the engine: the router uses them.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FrontendConfig": "frontend.config",
    "ServeConfig": "frontend.config",
    "Frontend": "frontend.server",
    "ServerHandle": "frontend.embedded",
    "serve_in_thread": "frontend.embedded",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'frontend' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
