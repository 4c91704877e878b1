"""The router's gRPC server: loom.v1.Generation (router/servicer.py), health, reflection,
Prometheus metrics, drain. Health is SERVING while at least one backend takes requests and
the router is not draining.

    router = Router(RouterConfig(backend=("10.0.0.1:50051", "10.0.0.2:50051")))
    await router.start()
    ...
    await router.drain()     # health NOT_SERVING, new calls UNAVAILABLE, then stop

    with serve_router_in_thread(backend=(a.target, b.target), port=0) as handle:
        Client(handle.target).generate("Once upon a time")
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import fields
from typing import Any

from router.backend_pool import BackendPool
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.policy import Chooser
from router.relay import Relay
from router.servicer import RouterServicer
from serving.auth import Authenticator
from serving.health import FINAL_STATUS_GRACE_S, NOT_SERVING, SERVING, DrainingHealthServicer
from serving.public_api import (
    SERVICE_NAME,
    add_public_port,
    add_public_services,
    public_server,
)
from serving.server_thread import ServerThread
from serving.tenants import (
    TenantDirectory,
    directory_from_api_keys,
    load_tenants,
    reload_tenants_file,
)

log = logging.getLogger("loom.router")


class Router:
    """One gRPC server in front of the backends; start, serve, then drain once."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = RouterMetrics(list(config.backends))
        self.pool = BackendPool(config, self.metrics, self._backends_changed)
        self.chooser = Chooser(config.policy, config.prefix_load_margin)
        self.relay = Relay(self.pool, self.chooser, self.metrics, config.retries)
        self.authenticator = Authenticator(self._load_directory())
        self.servicer = RouterServicer(
            self.pool,
            self.relay,
            self.authenticator,
            self.metrics,
            config.max_request_bytes,
            use_prefix=config.policy == "prefix",
        )
        self.health = DrainingHealthServicer()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: Any = None
        self._serving = False
        self._drained: asyncio.Future[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._cut_short = asyncio.Event()

    def _load_directory(self) -> TenantDirectory | None:
        if self.config.tenants is not None:
            return load_tenants(self.config.tenants)  # ValueError naming the file, line, field
        if self.config.api_keys is not None:
            return directory_from_api_keys(self.config.api_keys)
        return None

    async def start(self) -> None:
        cfg = self.config
        server = public_server(cfg)
        add_public_services(server, self.servicer, self.health)
        self.port = add_public_port(server, cfg)  # RuntimeError when the port is taken
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(cfg)
        self._serving = False
        await self._publish_health()
        # Each backend is asked once before the first call can come, so that a server that
        # has said it listens routes at once (each poll ends within its timeouts).
        await self.pool.start()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.pool.polled_once.wait(), 2 * cfg.health_check_timeout + 1)
        self._server = server
        await server.start()

    def _backends_changed(self) -> None:
        serving = bool(self.pool.serving()) and not self.servicer.draining
        if serving != self._serving:
            self._serving = serving
            self._health_task = asyncio.ensure_future(self._publish_health())

    async def _publish_health(self) -> None:
        for service in ("", SERVICE_NAME):
            # The latest state, not the one that scheduled this: the last update wins.
            await self.health.set(service, SERVING if self._serving else NOT_SERVING)

    def reload_tenants(self) -> bool:
        """SIGHUP: read the tenants file again; a bad one is logged and the old one stays."""
        directory = reload_tenants_file(self.config.tenants)
        if directory is None:
            return False
        self.authenticator.replace(directory)
        return True

    @property
    def target(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"{host}:{self.port}"

    async def drain(self, timeout: float | None = None) -> None:
        """Health NOT_SERVING and new calls UNAVAILABLE at once; calls in flight get `timeout`
        seconds (default: config.shutdown_timeout), then end UNAVAILABLE; then stop."""
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._drain(timeout))
        await asyncio.shield(self._drained)

    def cut_drain_short(self) -> None:
        """End the calls a drain is waiting for now, not at the timeout."""
        self._cut_short.set()

    async def _drain(self, timeout: float | None) -> None:
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        servicer = self.servicer
        servicer.draining = True
        self._serving = False
        await self.health.enter_graceful_shutdown()
        log.info("draining: %d calls in flight, up to %.1f s", servicer.num_in_flight, timeout)
        idle = asyncio.ensure_future(servicer.idle.wait())
        cut = asyncio.ensure_future(self._cut_short.wait())
        done, pending = await asyncio.wait(
            {idle, cut}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        if idle not in done:
            log.warning("ending %d calls still in flight", servicer.num_in_flight)
            for backend in self.pool.backends:
                backend.fail_in_flight("the router shut down before the request finished")
            await asyncio.wait_for(servicer.idle.wait(), 10.0)
        if self._server is not None:
            await self._server.stop(grace=FINAL_STATUS_GRACE_S)
        await self.pool.close()
        self.metrics.close()
        log.info("stopped")


class RouterHandle(ServerThread):
    """A Router on its own thread and event loop: `.router`, `.port`, `.target`,
    `.metrics_port`, `.stop(grace)`, and use as a context manager."""

    def __init__(self, router: Router) -> None:
        super().__init__(router, thread_name="grpc-router")
        self.router = router

    def __enter__(self) -> RouterHandle:
        return self


def serve_router_in_thread(host: str = "127.0.0.1", port: int = 0, **options: Any) -> RouterHandle:
    """Start a router on a background thread; returns once it listens, every backend polled
    once. `options` are RouterConfig's other fields, `backend` (HOST:PORT ...) first of all."""
    known = {f.name for f in fields(RouterConfig)} - {"host", "port"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown router options: {', '.join(sorted(unknown))}")
    handle = RouterHandle(Router(RouterConfig(host=host, port=port, **options)))
    handle._start()
    return handle
