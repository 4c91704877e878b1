"""Loom's servers in front of the engine: the gRPC service and the OpenAI-compatible HTTP API
(frontend/http), auth, metrics, the asyncio bridge to the engine loop, and the CLI behind
`python -m scheduler serve`."""

from frontend.config import FrontendConfig, ServeConfig
from frontend.server import Frontend, ServerHandle, serve_in_thread

__all__ = ["Frontend", "FrontendConfig", "ServeConfig", "ServerHandle", "serve_in_thread"]
