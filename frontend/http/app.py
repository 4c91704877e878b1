"""The OpenAI-compatible HTTP server: a Starlette app served by uvicorn on the event loop
the gRPC server runs on, so one process, one engine loop and one drain serve both.

    server = HttpServer(routes, host, port, ...)      # binds now: OSError when taken
    await server.start()
    ...
    await server.stop()                              # after the drain: closes connections
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from frontend.admission import Refused
from frontend.http.connection import throttle_uvicorn_warnings, with_header_timeout
from frontend.http.errors import HttpError, error_response, http_error_response, refused_response
from frontend.http.lora_routes import LoraRoutes
from frontend.http.routes import OpenAIRoutes

log = logging.getLogger(__name__)


def build_app(routes: OpenAIRoutes) -> Starlette:
    lora = LoraRoutes(routes)

    async def on_refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refused)
        return refused_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return http_error_response(exc)

    async def on_starlette_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(exc.status_code, message, error_type, headers=exc.headers)

    return Starlette(
        routes=[
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/chat/completions", routes.chat_completions, methods=["POST"]),
            Route("/v1/models", routes.models, methods=["GET"]),
            Route("/tokenize", routes.tokenize, methods=["POST"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/metrics", routes.metrics_text, methods=["GET"]),
            Route("/v1/load_lora_adapter", lora.load, methods=["POST"]),
            Route("/v1/unload_lora_adapter", lora.unload, methods=["POST"]),
        ],
        exception_handlers={
            Refused: on_refused,
            HttpError: on_http_error,
            HTTPException: on_starlette_error,
        },
    )


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the serving process owns SIGTERM: a drain), and
    saying when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


class HttpServer:
    def __init__(
        self,
        routes: OpenAIRoutes,
        host: str,
        port: int,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        header_timeout: float = 10.0,
        keep_alive_timeout: float = 5.0,
    ) -> None:
        # Bound here, so a taken port is an OSError at start, not uvicorn's sys.exit.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError:
            self._socket.close()
            raise
        self.port: int = self._socket.getsockname()[1]
        self.tls = tls_cert is not None
        config = uvicorn.Config(
            build_app(routes),
            log_config=None,
            access_log=False,
            lifespan="off",
            # Requests in flight were drained before stop(); what is left is cut short.
            timeout_graceful_shutdown=1,
            http=with_header_timeout(header_timeout),
            timeout_keep_alive=keep_alive_timeout,  # type: ignore[arg-type]
            ssl_certfile=tls_cert,
            ssl_keyfile=tls_key,
            ssl_ca_certs=tls_client_ca,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls_client_ca else ssl.CERT_NONE,
        )
        throttle_uvicorn_warnings()
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.ensure_future(self._server.serve(sockets=[self._socket]))
        listening = asyncio.ensure_future(self._server.listening.wait())
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            listening.cancel()
            self._task.result()  # raises what stopped it
            raise RuntimeError("the HTTP server stopped while starting")

    async def stop(self) -> None:
        if self._task is None:
            self._socket.close()
            return
        self._server.should_exit = True
        await self._task
