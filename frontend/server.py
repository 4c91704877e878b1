"""The gRPC server in front of an engine: Generation, health, reflection, metrics, drain.

Two ways to run it:

    # In a program that owns its event loop (what `python -m frontend serve` does):
    frontend = Frontend(engine, FrontendConfig(host="127.0.0.1", port=50051))
    await frontend.start()
    ...
    await frontend.drain()          # health NOT_SERVING, new calls UNAVAILABLE, then stop

    # Embedded, from synchronous code or tests (the server gets its own thread and loop):
    with serve_in_thread(engine, port=0) as handle:
        Client(handle.target).generate("Once upon a time")

The engine loop always runs in its own thread (frontend.async_engine).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from frontend.admission import AdmissionGate, Admitter
from frontend.async_engine import AsyncEngine
from frontend.config import FrontendConfig
from frontend.metrics import ServingMetrics
from frontend.servicer import GenerationServicer
from frontend.tenant_labels import TenantLabels
from serving.auth import Authenticator
from serving.health import FINAL_STATUS_GRACE_S, NOT_SERVING, SERVING, DrainingHealthServicer
from serving.public_api import (
    SERVICE_NAME,
    add_public_port,
    add_public_services,
    public_server,
)
from serving.quotas import Quotas
from serving.tenants import (
    TenantDirectory,
    directory_from_api_keys,
    load_tenants,
    reload_tenants_file,
)

log = logging.getLogger(__name__)

WORKER_WATCH_INTERVAL = 0.25  # seconds between looks at the worker's availability


class LiveHealthServicer(DrainingHealthServicer):
    """Answers NOT_SERVING as soon as the engine loop is gone, even between updates, and
    while the worker is unavailable (a remote one reconnecting)."""

    def __init__(self, async_engine: AsyncEngine) -> None:
        super().__init__()
        self._async_engine = async_engine
        self._worker_available: bool | None = None

    async def Check(self, request: Any, context: Any) -> Any:
        await self.sync()
        return await super().Check(request, context)

    async def sync(self) -> None:
        """Bring the status up to date (once draining, nothing changes it again)."""
        if not self._async_engine.alive:
            await self.enter_graceful_shutdown()
            return
        available = self._async_engine.engine.worker_available
        if available != self._worker_available:
            self._worker_available = available
            for service in ("", SERVICE_NAME):
                await self.set(service, SERVING if available else NOT_SERVING)


class Frontend:
    """One gRPC server and one engine loop; start, serve, then drain once."""

    def __init__(self, engine: Any, config: FrontendConfig | None = None) -> None:
        self.engine = engine
        self.config = config or FrontendConfig()
        labels = TenantLabels(self.config.metrics_tenant_labels)
        self.metrics = ServingMetrics(engine.info.model_name, tenant_labels=labels)
        self.async_engine = AsyncEngine(engine, self.metrics, self.config.max_step_failures)
        self.metrics.update_engine_stats(self.async_engine.last_stats)  # block counts from start
        self.gate = AdmissionGate()
        self.health = LiveHealthServicer(self.async_engine)
        self.authenticator = Authenticator(self._load_directory())
        self.quotas = Quotas()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._server: Any = None
        self._http: Any = None  # frontend.http.app.HttpServer
        self._drained: asyncio.Future[None] | None = None
        self._worker_watch: asyncio.Task[None] | None = None
        self._cut_short = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        server = public_server(cfg)
        servicer = GenerationServicer(
            self.async_engine,
            self.authenticator,
            self.gate,
            cfg.max_request_bytes,
            self.quotas,
            self.metrics,
        )
        self._use_directory(self.authenticator.directory)
        add_public_services(server, servicer, self.health)
        self.port = add_public_port(server, cfg)  # RuntimeError when the port is taken
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(cfg)  # OSError
        if cfg.http_port is not None:
            self._http = self._http_server()  # OSError when the port is taken
            self.http_port = self._http.port
        for service in ("", SERVICE_NAME):
            await self.health.set(service, NOT_SERVING)
        # The loop runs before the first call can arrive, so no health check finds it absent.
        self.async_engine.start()
        self._server = server
        await server.start()
        if self._http is not None:
            await self._http.start()
        await self.health.sync()
        asyncio.get_running_loop().create_task(self._watch_engine_loop())
        self._worker_watch = asyncio.get_running_loop().create_task(self._watch_worker())

    def _http_server(self) -> Any:
        # Imported only when asked for: a gRPC-only server loads no HTTP stack.
        from frontend.http.app import HttpServer
        from frontend.http.routes import OpenAIRoutes

        cfg = self.config
        admitter = Admitter(self.async_engine, self.gate, self.quotas, self.metrics)
        routes = OpenAIRoutes(
            admitter,
            self.authenticator,
            self.metrics,
            cfg.max_request_bytes,
            cfg.max_prompts_per_request,
        )
        return HttpServer(
            routes,
            cfg.host,
            cfg.http_port,
            cfg.tls_cert,
            cfg.tls_key,
            cfg.tls_client_ca,
            cfg.http_header_timeout,
            cfg.http_keep_alive_timeout,
        )

    def _load_directory(self) -> TenantDirectory | None:
        cfg = self.config
        if cfg.tenants is not None:
            return load_tenants(cfg.tenants)  # ValueError naming the file, line and field
        if cfg.api_keys is not None:
            return directory_from_api_keys(cfg.api_keys)
        return None

    def _use_directory(self, directory: TenantDirectory | None) -> None:
        if directory is None:
            self.metrics.set_tenants(None)
            return
        self.engine.set_tenant_weights(directory.weights())
        self.metrics.set_tenants([tenant.name for tenant in directory])

    def reload_tenants(self) -> bool:
        """SIGHUP: read the tenants file again. A good file serves the next call (admitted
        requests keep going); a bad one is logged and the previous tenants stay."""
        directory = reload_tenants_file(self.config.tenants)
        if directory is None:
            return False
        self._use_directory(directory)
        self.authenticator.replace(directory)
        return True

    async def _watch_worker(self) -> None:
        """Keep health (for Watch callers too) in step with the worker's availability."""
        while self.async_engine.alive:
            await self.health.sync()
            await asyncio.sleep(WORKER_WATCH_INTERVAL)

    async def _watch_engine_loop(self) -> None:
        """Flip health (for Watch callers too) when the engine loop stops for good."""
        await asyncio.get_running_loop().run_in_executor(None, self.async_engine.wait_stopped)
        await self.health.enter_graceful_shutdown()

    @property
    def target(self) -> str:
        return f"{self._reachable_host}:{self.port}"

    @property
    def base_url(self) -> str | None:
        if self.http_port is None:
            return None
        scheme = "https" if self.config.tls_cert else "http"
        host = self._reachable_host
        host = f"[{host}]" if ":" in host else host
        return f"{scheme}://{host}:{self.http_port}/v1"

    @property
    def _reachable_host(self) -> str:
        return "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host

    async def drain(self, timeout: float | None = None) -> None:
        """Health NOT_SERVING and new calls UNAVAILABLE at once; in-flight requests get
        `timeout` seconds (default: config.shutdown_timeout) to finish, then are aborted;
        then the server and the engine loop stop. Safe to call more than once."""
        if self._drained is None:
            self._drained = asyncio.ensure_future(self._drain(timeout))
        await asyncio.shield(self._drained)

    def cut_drain_short(self) -> None:
        """Abort the requests a drain is waiting for now, not at the timeout."""
        self._cut_short.set()

    async def _wait_in_flight(self, timeout: float) -> bool:
        """True when every request finished; False at the timeout or when cut short."""
        idle = asyncio.ensure_future(self.gate.wait_idle(None))
        cut = asyncio.ensure_future(self._cut_short.wait())
        done, pending = await asyncio.wait(
            {idle, cut}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for task in pending:
            task.cancel()
        return idle in done

    async def _drain(self, timeout: float | None) -> None:
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self.gate.draining = True
        if self._worker_watch is not None:
            self._worker_watch.cancel()
        await self.health.enter_graceful_shutdown()
        log.info("draining: %d requests in flight, up to %.1f s", self.gate.num_in_flight, timeout)
        if not await self._wait_in_flight(timeout):
            log.warning("aborting %d requests still in flight", self.gate.num_in_flight)
            self.gate.aborted_by_shutdown = True
            self.async_engine.abort_all()
            await self.gate.wait_idle(10.0)
        if self._server is not None:
            await self._server.stop(grace=FINAL_STATUS_GRACE_S)
        if self._http is not None:
            await self._http.stop()
        await asyncio.get_running_loop().run_in_executor(None, self.async_engine.shutdown)
        self.metrics.close()
        log.info("stopped")


__all__ = ["Frontend", "LiveHealthServicer"]
