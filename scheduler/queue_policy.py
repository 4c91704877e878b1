"""Queue policies: which waiting request is admitted next, and which running one loses.

One seam for every policy: a policy is the waiting queue plus an ordering of running requests
(most important first; the scheduler preempts from the end). `fcfs` and `priority` live here;
a per-tenant fair-share policy (VTC) fits the same seam, reading `Request.tenant_usage`.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque

from scheduler.request import Request, RequestStatus

QUEUE_POLICIES = ("fcfs", "priority")


class QueuePolicy(ABC):
    @staticmethod
    @abstractmethod
    def running_key(req: Request) -> tuple[int, ...]:
        """Sort key of running requests: smallest runs first, largest is preempted first."""

    @abstractmethod
    def add(self, req: Request) -> None:
        """A request joins the waiting queue (new, or preempted and waiting to resume)."""

    @abstractmethod
    def peek(self) -> Request | None:
        """The request to admit next, left in the queue."""

    @abstractmethod
    def pop(self) -> Request:
        """Remove and return what `peek` returned."""

    @abstractmethod
    def remove(self, req: Request) -> bool:
        """Take a waiting request out (abort); False if it is not queued."""

    @abstractmethod
    def __len__(self) -> int: ...


class FCFSPolicy(QueuePolicy):
    """Arrival order. A preempted request goes back to the head: it was admitted before
    anything still waiting."""

    def __init__(self) -> None:
        self._queue: deque[Request] = deque()

    @staticmethod
    def running_key(req: Request) -> tuple[int, ...]:
        return (req.arrival_seq,)

    def add(self, req: Request) -> None:
        if req.status is RequestStatus.PREEMPTED:
            # Victims are preempted newest first, so each one is older than the last: the
            # head stays in arrival order.
            self._queue.appendleft(req)
        else:
            self._queue.append(req)

    def peek(self) -> Request | None:
        return self._queue[0] if self._queue else None

    def pop(self) -> Request:
        return self._queue.popleft()

    def remove(self, req: Request) -> bool:
        try:
            self._queue.remove(req)
        except ValueError:
            return False
        return True

    def __len__(self) -> int:
        return len(self._queue)


class PriorityPolicy(QueuePolicy):
    """Lowest `priority` value first (the vLLM convention: 0 beats 10), then arrival order."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Request]] = []

    @staticmethod
    def running_key(req: Request) -> tuple[int, ...]:
        return (req.priority, req.arrival_seq)

    def add(self, req: Request) -> None:
        heapq.heappush(self._heap, (req.priority, req.arrival_seq, req))

    def peek(self) -> Request | None:
        return self._heap[0][2] if self._heap else None

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[2]

    def remove(self, req: Request) -> bool:
        for i, entry in enumerate(self._heap):
            if entry[2] is req:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return True
        return False

    def __len__(self) -> int:
        return len(self._heap)


def create_queue_policy(name: str) -> QueuePolicy:
    if name == "fcfs":
        return FCFSPolicy()
    if name == "priority":
        return PriorityPolicy()
    raise ValueError(f"queue_policy must be one of {', '.join(QUEUE_POLICIES)}, got {name!r}")
