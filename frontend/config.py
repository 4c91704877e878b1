"""The engine server's own settings, beside the engine's (scheduler/config.py).

`ServeConfig` is everything `python -m scheduler serve` takes: the CLI builds one flag per
leaf field of it, with the field's default and help, and nothing else. What any Loom server
takes (address, callers, TLS, limits) is `ServerConfig` (frontend/server_config.py), which the
router's settings extend too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.settings import check_at_least, setting
from frontend.server_config import ServerConfig
from scheduler.config import EngineConfig


@dataclass(slots=True, frozen=True)
class FrontendConfig(ServerConfig):
    http_port: int | None = setting(
        None,
        "OpenAI-compatible HTTP API port on --host (/v1/completions, /v1/chat/completions, "
        "/v1/models, /health, /metrics; default: off; 0: any free port)",
    )
    max_step_failures: int = setting(3, "failed engine steps in a row before the loop stops")

    def __post_init__(self) -> None:
        # Zero-argument super() does not work in a slots dataclass (the class is rebuilt).
        ServerConfig.__post_init__(self)
        check_at_least(self, "http_port", 0, optional=True)
        check_at_least(self, "max_step_failures", 1)


@dataclass(slots=True, frozen=True)
class ServeConfig:
    engine: EngineConfig = field(default_factory=EngineConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
