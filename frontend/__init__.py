"""The engine's servers: the gRPC service and the OpenAI-compatible HTTP API in front of the
engine, on one event loop, and `python -m frontend serve`. What the router shares with them
lives in serving/. Names are imported on first use.

- cli.py, __main__.py  `python -m frontend serve` / `health`
- ports.py           the ports taken before the model loads, so a busy one ends the start
- config.py          FrontendConfig, RemoteWorkerConfig (--worker), ServeConfig: all `serve` takes
- server.py          the grpc.aio server: health, reflection, metrics, drain, tenants reload; the
                     HTTP server on the same loop
- embedded.py        serve_in_thread: a server on its own thread and loop (tests, programs)
- remote_engine.py   an engine whose worker is a `python -m worker serve` elsewhere
- admission.py       what both APIs share: open or draining, validation, quotas, queueing, the
                     status of every refusal, delivery, release
- lora_admin.py      loading and unloading LoRA adapters at run time: admin tenants, statuses
- servicer.py, protocol.py  the gRPC servicer (streaming, Abort, n, GetLoad), proto <-> engine
- http/              the OpenAI-compatible API (Starlette, served by uvicorn on the gRPC loop)
- async_engine.py    the engine loop in its own thread, deltas handed to asyncio callers
- metrics.py         the Prometheus series
- lora_metrics.py    the LoRA series (lora_requests_info, as the Inference Extension reads it)
- tenant_labels.py   the `tenant` label of those series, bounded (--metrics-tenant-labels)
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
