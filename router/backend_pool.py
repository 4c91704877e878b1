"""The backends and their health: each is polled (GetLoad) every health_check_interval; a
backend joins once it answers GetModelInfo with the model the others serve, takes requests
while it answers, stops taking them while it drains, and is out after health_check_failures
failed polls in a row, when its calls in flight end UNAVAILABLE. It rejoins, with an empty
prefix index, when it answers again. A call that fails UNAVAILABLE makes its backend suspect:
no new requests until a poll, run at once, says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

import grpc

from client.channel import channel_credentials, open_channel
from client.request import call_metadata
from loompb import serving_pb2, serving_pb2_grpc
from router.backend import Backend, BackendState
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.prefix_index import PrefixIndex

log = logging.getLogger("loom.router")

CHANNEL_OPTIONS = [
    # A restarted backend is reconnected within seconds, not gRPC's default two minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # A replica that comes back at a new address (a restarted pod) is looked up again soon.
    ("grpc.dns_min_time_between_resolutions_ms", 1000),
    # Replies are the backends' own; the router's callers are limited where they come in.
    ("grpc.max_receive_message_length", -1),
]


class BackendPool:
    def __init__(
        self, config: RouterConfig, metrics: RouterMetrics, on_change: Callable[[], None]
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._on_change = on_change
        key = None
        if config.backend_api_key_file is not None:
            key = Path(config.backend_api_key_file).read_text().strip()
        self._metadata = call_metadata(key, None)  # the router's own calls
        self._credentials = channel_credentials(
            config.backend_tls_ca,
            config.backend_tls_cert,
            config.backend_tls_key,
            config.backend_tls,
        )
        self.backends: list[Backend] = []
        self.model: serving_pb2.ModelInfo | None = None  # of the first backend that joined
        self.polled_once = asyncio.Event()  # every backend answered, or failed, once
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Open a channel to each backend and start watching them (on the running loop)."""
        for address in self.config.backends:
            channel = open_channel(address, self._credentials, CHANNEL_OPTIONS, aio=True)
            backend = Backend(address, channel, serving_pb2_grpc.GenerationStub(channel))
            self.backends.append(backend)
            self._wake[address] = asyncio.Event()
        pending = set(self.config.backends)

        async def first_then_watch(backend: Backend) -> None:
            await self._poll(backend)
            pending.discard(backend.address)
            if not pending:
                self.polled_once.set()
            await self._watch(backend)

        self._tasks = [asyncio.create_task(first_then_watch(b)) for b in self.backends]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for backend in self.backends:
            await backend.channel.close()

    def serving(self) -> list[Backend]:
        return [b for b in self.backends if b.serving]

    def answering(self) -> list[Backend]:
        """Backends whose last poll answered (those serving, draining or suspect)."""
        alive = (BackendState.UP, BackendState.DRAINING, BackendState.SUSPECT)
        return [b for b in self.backends if b.state in alive and b.load is not None]

    def suspect(self, backend: Backend, reason: str) -> None:
        """A call to it failed UNAVAILABLE: no new requests until a poll says it answers."""
        if backend.state in (BackendState.UP, BackendState.DRAINING):
            self._set_state(backend, BackendState.SUSPECT, reason)
        self._wake[backend.address].set()

    async def _watch(self, backend: Backend) -> None:
        wake = self._wake[backend.address]
        while True:
            with contextlib.suppress(asyncio.TimeoutError):  # the interval passed
                await asyncio.wait_for(wake.wait(), self.config.health_check_interval)
            wake.clear()
            await self._poll(backend)

    async def _poll(self, backend: Backend) -> None:
        timeout, metadata = self.config.health_check_timeout, self._metadata
        try:
            info = backend.info
            if info is None:
                info = await backend.stub.GetModelInfo(
                    serving_pb2.GetModelInfoRequest(), timeout=timeout, metadata=metadata
                )
            load = await backend.stub.GetLoad(
                serving_pb2.GetLoadRequest(), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as err:
            self._poll_failed(backend, f"{err.code().name}: {err.details()}")
            return
        if backend.info is None and not self._join(backend, info):
            return
        backend.failures = 0
        backend.load = load
        backend.in_flight_at_poll = backend.num_in_flight
        self.metrics.observe_poll(backend.address, load, backend.estimated_load())
        state = BackendState.DRAINING if load.draining else BackendState.UP
        if backend.state is not state:
            self._set_state(backend, state, "it is shutting down" if load.draining else "")

    def _join(self, backend: Backend, info: serving_pb2.ModelInfo) -> bool:
        model = self.model
        if model is not None and (info.model_name, info.vocab_size) != (
            model.model_name,
            model.vocab_size,
        ):
            if backend.state is not BackendState.INCOMPATIBLE:
                reason = (
                    f"it serves {info.model_name} (vocabulary {info.vocab_size}), the others "
                    f"{model.model_name} (vocabulary {model.vocab_size})"
                )
                self._set_state(backend, BackendState.INCOMPATIBLE, reason)
            return False
        if model is None:
            self.model = info
        backend.info = info
        # Whatever the router believed it cached is gone if it restarted.
        backend.index = PrefixIndex(info.block_size, max(1, info.num_kv_blocks))
        return True

    def _poll_failed(self, backend: Backend, reason: str) -> None:
        backend.failures += 1
        if backend.state is BackendState.DOWN:
            if backend.failures == 1:  # once per outage (or at start), not at every poll
                log.warning("backend %s is not answering: %s", backend.address, reason)
            backend.reason = reason
            return
        if backend.failures < self.config.health_check_failures:
            return
        backend.info = None  # asked again when it answers: it may have restarted
        self._set_state(backend, BackendState.DOWN, reason)
        num_failed = backend.fail_in_flight(f"backend {backend.address} stopped answering")
        if num_failed:
            log.warning(
                "backend %s: %d calls in flight end UNAVAILABLE", backend.address, num_failed
            )

    def _set_state(self, backend: Backend, state: BackendState, reason: str) -> None:
        backend.state, backend.reason = state, reason
        self.metrics.backend_up.labels(backend.address).set(1 if backend.serving else 0)
        level = (
            logging.INFO if state in (BackendState.UP, BackendState.DRAINING) else logging.WARNING
        )
        log.log(
            level, "backend %s is %s%s", backend.address, state.value, f": {reason}" * bool(reason)
        )
        self._on_change()
