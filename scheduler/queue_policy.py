"""Queue policies: which waiting request is admitted next, and which running one loses.

One seam for every policy: a policy is the waiting queue plus an ordering of running requests
(most important first; the scheduler preempts from the end). `fcfs` and `priority` order by
what a request carries; `fair` (VTC) by its tenant's virtual counter (`Request.tenant_usage`),
which changes as tenants are served, so it re-sorts the running requests before each step.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque

from scheduler.request import Request, RequestStatus
from scheduler.tenant_usage import TenantUsage

QUEUE_POLICIES = ("fcfs", "priority", "fair")


class QueuePolicy(ABC):
    @staticmethod
    @abstractmethod
    def running_key(req: Request) -> tuple[object, ...]:
        """Sort key of running requests: smallest runs first, largest is preempted first."""

    def order_running(self, running: list[Request]) -> None:
        """Re-sort the running requests at the start of a step, for policies whose key moves
        while a request runs; a key fixed at arrival keeps the list sorted as it is."""
        return

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
    def running_key(req: Request) -> tuple[object, ...]:
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
    def running_key(req: Request) -> tuple[object, ...]:
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


class FairSharePolicy(QueuePolicy):
    """Virtual Token Counter (Sheng et al., OSDI'24): the next request comes from the backlogged
    tenant (one with requests waiting) whose counter is smallest, ties to the older head;
    within a tenant, lowest priority value first, then arrival order. A tenant whose queue was
    empty is lifted, on its next arrival, to the smallest counter of the backlogged tenants (or,
    with none, to that of the tenant that left the queue last), so time away banks no credit.
    Running requests sort by counter: the preemption victim is the newest, least important
    request of the tenant with the largest counter."""

    def __init__(self) -> None:
        # Backlogged tenants only: a tenant's entry goes when its last waiting request does.
        self._queues: dict[str, list[tuple[int, int, Request]]] = {}
        self._num_waiting = 0
        self._last_left: TenantUsage | None = None

    @staticmethod
    def running_key(req: Request) -> tuple[object, ...]:
        return (req.tenant_usage.counter, req.tenant, req.priority, req.arrival_seq)

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=self.running_key)

    def add(self, req: Request) -> None:
        queue = self._queues.get(req.tenant)
        if queue is None:
            # A preempted request's tenant was running all along: no lift for it.
            if req.status is not RequestStatus.PREEMPTED:
                self._lift(req.tenant_usage)
            queue = self._queues[req.tenant] = []
        heapq.heappush(queue, (req.priority, req.arrival_seq, req))
        self._num_waiting += 1

    def _lift(self, usage: TenantUsage) -> None:
        backlogged = [queue[0][2].tenant_usage.counter for queue in self._queues.values()]
        if backlogged:
            usage.counter = max(usage.counter, min(backlogged))
        elif self._last_left is not None:
            usage.counter = max(usage.counter, self._last_left.counter)

    def _head_tenant(self) -> str | None:
        best_name, best_key = None, None
        for name, queue in self._queues.items():
            head = queue[0][2]
            key = (head.tenant_usage.counter, head.arrival_seq)
            if best_key is None or key < best_key:
                best_name, best_key = name, key
        return best_name

    def peek(self) -> Request | None:
        name = self._head_tenant()
        return None if name is None else self._queues[name][0][2]

    def pop(self) -> Request:
        name = self._head_tenant()
        if name is None:
            raise IndexError("pop from an empty queue")
        queue = self._queues[name]
        req = heapq.heappop(queue)[2]
        self._taken(name, queue, req)
        return req

    def remove(self, req: Request) -> bool:
        queue = self._queues.get(req.tenant)
        if queue is None:
            return False
        for i, entry in enumerate(queue):
            if entry[2] is req:
                queue[i] = queue[-1]
                queue.pop()
                heapq.heapify(queue)
                self._taken(req.tenant, queue, req)
                return True
        return False

    def _taken(self, name: str, queue: list[tuple[int, int, Request]], req: Request) -> None:
        self._num_waiting -= 1
        if not queue:
            del self._queues[name]
            self._last_left = req.tenant_usage

    def __len__(self) -> int:
        return self._num_waiting


def create_queue_policy(name: str) -> QueuePolicy:
    if name == "fcfs":
        return FCFSPolicy()
    if name == "priority":
        return PriorityPolicy()
    if name == "fair":
        return FairSharePolicy()
    raise ValueError(f"queue_policy must be one of {', '.join(QUEUE_POLICIES)}, got {name!r}")
