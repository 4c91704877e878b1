"""One engine replica as the router sees it: its channel, what it serves, its last load report,
the generation calls the router has in flight on it, and what its prefix cache likely holds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from loompb import serving_pb2, serving_pb2_grpc
from router.prefix_index import PrefixIndex


class BackendState(enum.Enum):
    DOWN = "down"  # not answering (or not yet asked): no requests
    UP = "up"  # answering and taking requests
    DRAINING = "draining"  # answering, shutting down: requests in flight go on, no new ones
    SUSPECT = "suspect"  # a call just failed UNAVAILABLE: no new requests until a poll answers
    INCOMPATIBLE = "incompatible"  # serves another model than the other backends


@dataclass(slots=True, eq=False)
class ForwardedCall:
    """A generation call in flight on a backend. `lost` is set when the backend is given up
    on, just before the call is cancelled, so the relay answers UNAVAILABLE, not CANCELLED."""

    call: Any  # a grpc.aio call object
    lost: str | None = None


@dataclass(slots=True, eq=False)
class Backend:
    address: str
    channel: Any  # grpc.aio.Channel
    stub: serving_pb2_grpc.GenerationStub
    state: BackendState = BackendState.DOWN
    reason: str = "not polled yet"  # why it is not UP, for logs and errors
    info: serving_pb2.ModelInfo | None = None  # from GetModelInfo when it joined
    load: serving_pb2.Load | None = None  # the last poll's answer
    in_flight_at_poll: int = 0  # len(calls) when that answer came
    failures: int = 0  # polls failed in a row
    calls: set[ForwardedCall] = field(default_factory=set)
    index: PrefixIndex | None = None  # set when it joins; the block size is the backend's

    @property
    def serving(self) -> bool:
        """Whether it takes new requests."""
        return self.state is BackendState.UP

    @property
    def num_in_flight(self) -> int:
        return len(self.calls)

    def estimated_load(self) -> int:
        """Requests running and waiting on it: the last poll's figure (which counts other
        clients' requests too), moved by what this router started and finished since."""
        if self.load is None:
            return self.num_in_flight
        polled = self.load.num_requests_running + self.load.num_requests_waiting
        return max(self.num_in_flight, polled + self.num_in_flight - self.in_flight_at_poll)

    def fail_in_flight(self, reason: str) -> int:
        """End every generation call in flight here: their callers get UNAVAILABLE."""
        calls = list(self.calls)
        for forwarded in calls:
            forwarded.lost = reason
            forwarded.call.cancel()
        return len(calls)
