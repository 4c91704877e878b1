"""The ports `serve` listens on, taken before the model loads: a port another process holds
ends the start at once, naming it, rather than after minutes of loading.

Each port is bound (with SO_REUSEADDR, as the servers bind theirs) and held while the model
loads, then let go just before the servers bind it for good. A port given as 0 is resolved
here to the free port the system picked, which the servers then use.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass, field

from frontend.config import FrontendConfig


class PortTaken(OSError):
    """A port `serve` needs is in use, or cannot be bound on its host."""


@dataclass(slots=True)
class ReservedPorts:
    config: FrontendConfig  # with every port the servers will bind, none left at 0
    _sockets: list[socket.socket] = field(default_factory=list)

    def release(self) -> None:
        """Let the ports go, for the servers to bind them now."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


def reserve_ports(config: FrontendConfig) -> ReservedPorts:
    """Bind the gRPC, HTTP and metrics ports the settings name; PortTaken names the first
    that cannot be bound."""
    reserved = ReservedPorts(config)
    wanted = [("gRPC", "port", config.host), ("HTTP", "http_port", config.host)]
    wanted.append(("metrics", "metrics_port", config.metrics_host or config.host))
    resolved = {}
    try:
        for what, name, host in wanted:
            port = getattr(config, name)
            if port is None:
                continue
            sock = _bind(what, host, port)
            reserved._sockets.append(sock)
            resolved[name] = sock.getsockname()[1]
    except PortTaken:
        reserved.release()
        raise
    reserved.config = dataclasses.replace(config, **resolved)
    return reserved


def _bind(what: str, host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen()  # a listening socket is what makes another bind of the port fail
    except OSError as exc:
        sock.close()
        raise PortTaken(f"cannot listen on {host}:{port} ({what}): {exc.strerror}") from None
    return sock
