"""grpc.health.v1 for a server that drains: grpc's asyncio health service, except that a Watch
stream ends (status OK) once the server enters its graceful shutdown, right after it sent
NOT_SERVING. grpc's own Watch never ends, so one open watch would hold the server's stop for
its whole grace period; a watcher that reconnects then finds the port closed."""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health, health_pb2

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

# How long a stopping server waits for the calls it has already answered or aborted to send
# their last status. Stop returns as soon as they have; calls still open then are cancelled
# (CANCELLED at the caller), so this is generous for a starved machine, not a wait.
FINAL_STATUS_GRACE_S = 10.0


class DrainingHealthServicer(health.aio.HealthServicer):
    """Check as grpc's; Watch from this class's own copy of the statuses, ending at drain."""

    def __init__(self) -> None:
        super().__init__()
        self._watched_statuses: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Condition()
        self._draining = False

    async def set(self, service: str, status: int) -> None:
        await super().set(service, status)
        if self._draining:
            return  # as grpc's: nothing changes a status after the shutdown began
        async with self._changed:
            self._watched_statuses[service] = status
            self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        async with self._changed:
            self._draining = True
            for service in self._watched_statuses:
                self._watched_statuses[service] = NOT_SERVING
            self._changed.notify_all()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        last_sent: int | None = None
        async with self._changed:
            while True:
                status = self._watched_statuses.get(request.service, SERVICE_UNKNOWN)
                if status != last_sent:
                    await context.write(health_pb2.HealthCheckResponse(status=status))
                    last_sent = status
                if self._draining:
                    return
                await self._changed.wait()
