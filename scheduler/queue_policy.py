"""Queue policies: which waiting request is admitted next, and which running one loses.

One seam for every policy: a policy is the waiting queue plus an ordering of running requests
(most important first; the scheduler preempts from the end) and `preempts`, which says whether
a waiting request may take a running one's place (scheduler/preemption.py). `fcfs` and
`priority` order by what a request carries; `fair` (VTC) by its tenant's virtual counter
(`Request.tenant_usage`), which changes as tenants are served, so it re-sorts the running
requests before each step; `deadline` is `fair` across tenants and least slack first within
one (scheduler/deadlines.py).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import deque

from scheduler.deadlines import DeadlineEstimator
from scheduler.request import Request, RequestStatus
from scheduler.tenant_usage import TenantUsage

QUEUE_POLICIES = ("fcfs", "priority", "fair", "deadline")


class QueuePolicy(ABC):
    @abstractmethod
    def running_key(self, req: Request) -> tuple[object, ...]:
        """Sort key of running requests: smallest runs first, largest is preempted first."""

    def order_running(self, running: list[Request]) -> None:
        """Re-sort the running requests at the start of a step, for policies whose key moves
        while a request runs; a key fixed at arrival keeps the list sorted as it is."""
        return

    def preempts(self, victim: Request, waiting: Request, num_given_up: int = 0) -> str | None:
        """The cause (PREEMPTION_CAUSES) for which `waiting`, next in line and finding no
        room, may take running `victim`'s place; None when it may not. `num_given_up`: the
        seats the victim's tenant already gives up to `waiting`. None for `fcfs`."""
        return None

    @property
    def predicts_deadlines(self) -> bool:
        """Whether a request is ended as soon as it cannot finish by its deadline, rather
        than once the deadline has passed (scheduler/deadlines.py)."""
        return False

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
    """Lowest `priority` value first (the vLLM convention: 0 beats 10), then arrival order.
    A request taken out (`remove`) leaves its heap entry behind, skipped when it comes up: a
    deadline can end thousands of waiting requests a second, each in O(1)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Request]] = []
        self._queued: set[Request] = set()

    @staticmethod
    def running_key(req: Request) -> tuple[object, ...]:
        return (req.priority, req.arrival_seq)

    def preempts(self, victim: Request, waiting: Request, num_given_up: int = 0) -> str | None:
        return "priority" if victim.priority > waiting.priority else None

    def add(self, req: Request) -> None:
        heapq.heappush(self._heap, (req.priority, req.arrival_seq, req))
        self._queued.add(req)

    def peek(self) -> Request | None:
        heap = self._heap
        while heap and heap[0][2] not in self._queued:
            heapq.heappop(heap)  # taken out earlier
        return heap[0][2] if heap else None

    def pop(self) -> Request:
        if self.peek() is None:
            raise IndexError("pop from an empty queue")
        req = heapq.heappop(self._heap)[2]
        self._queued.discard(req)
        return req

    def remove(self, req: Request) -> bool:
        if req not in self._queued:
            return False
        self._queued.discard(req)
        return True

    def __len__(self) -> int:
        return len(self._queued)


class FairSharePolicy(QueuePolicy):
    """Virtual Token Counter (Sheng et al., OSDI'24): the next request comes from the backlogged
    tenant (one with requests waiting) whose counter is smallest, ties to the tenant holding
    fewer seats for its weight, then to the older head; within a tenant, lowest priority value
    first, then arrival order. A tenant whose queue was empty is lifted, on its next arrival,
    to the smallest counter of the backlogged tenants (or, with none, to that of the tenant
    that left the queue last), so time away banks no credit. Running requests sort by counter:
    the preemption victim is the newest, least important request of the tenant with the
    largest counter. As under `priority`, a request taken out leaves its entry behind."""

    def __init__(self) -> None:
        # Backlogged tenants only: a tenant's entry goes when its last waiting request does.
        self._queues: dict[str, list[tuple[object, ...]]] = {}
        self._num_live: dict[str, int] = {}  # waiting requests per tenant, stale entries not
        self._queued: set[Request] = set()
        self._last_left: TenantUsage | None = None

    def running_key(self, req: Request) -> tuple[object, ...]:
        return (req.tenant_usage.counter, req.tenant, req.priority, req.arrival_seq)

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=self.running_key)

    def preempts(self, victim: Request, waiting: Request, num_given_up: int = 0) -> str | None:
        """Across tenants, when the victim's tenant is further over its share (a larger
        counter, or the same one, a newcomer being lifted to it, while holding more seats for
        its weight) and keeps, after the swap, at least as many seats for its weight as the
        waiting tenant will hold: each swap moves towards an even split of the seats and never
        past it, so two tenants holding their shares do not trade seats back and forth (one
        seat too few to split evenly is time-shared, a quantum at a time). Within a tenant,
        by priority."""
        if victim.tenant == waiting.tenant:
            return "priority" if victim.priority > waiting.priority else None
        ahead, behind = victim.tenant_usage, waiting.tenant_usage
        if _share_key(ahead, -num_given_up) <= _share_key(behind):
            return None
        seats_kept = (ahead.num_running - num_given_up) / ahead.weight
        if seats_kept < (behind.num_running + 1) / behind.weight:
            return None
        return "share"

    def _entry(self, req: Request) -> tuple[object, ...]:
        """A waiting request's place in its tenant's queue; the request itself comes last."""
        return (req.priority, req.arrival_seq, req)

    def add(self, req: Request) -> None:
        queue = self._queues.get(req.tenant)
        if queue is None:
            # A preempted request's tenant was running all along: no lift for it.
            if req.status is not RequestStatus.PREEMPTED:
                self._lift(req.tenant_usage)
            queue = self._queues[req.tenant] = []
            self._num_live[req.tenant] = 0
        heapq.heappush(queue, self._entry(req))
        self._num_live[req.tenant] += 1
        self._queued.add(req)

    def _lift(self, usage: TenantUsage) -> None:
        backlogged = [queue[0][-1].tenant_usage.counter for queue in self._queues.values()]
        if backlogged:
            usage.counter = max(usage.counter, min(backlogged))
        elif self._last_left is not None:
            usage.counter = max(usage.counter, self._last_left.counter)

    def _head(self, queue: list[tuple[object, ...]]) -> Request:
        """A backlogged tenant's first waiting request, past entries taken out earlier."""
        while queue[0][-1] not in self._queued:
            heapq.heappop(queue)
        return queue[0][-1]

    def _head_tenant(self) -> str | None:
        best_name, best_key = None, None
        for name, queue in self._queues.items():
            head = self._head(queue)
            key = (*_share_key(head.tenant_usage), head.arrival_seq)
            if best_key is None or key < best_key:
                best_name, best_key = name, key
        return best_name

    def peek(self) -> Request | None:
        name = self._head_tenant()
        return None if name is None else self._head(self._queues[name])

    def pop(self) -> Request:
        name = self._head_tenant()
        if name is None:
            raise IndexError("pop from an empty queue")
        req = heapq.heappop(self._queues[name])[-1]  # the head: `_head_tenant` cleaned it
        self._taken(req)
        return req

    def remove(self, req: Request) -> bool:
        if req not in self._queued:
            return False
        self._taken(req)
        return True

    def _taken(self, req: Request) -> None:
        self._queued.discard(req)
        name = req.tenant
        self._num_live[name] -= 1
        if not self._num_live[name]:
            del self._queues[name], self._num_live[name]
            self._last_left = req.tenant_usage

    def __len__(self) -> int:
        return len(self._queued)


def _share_key(usage: TenantUsage, seats: int = 0) -> tuple[float, float]:
    """How far over its share a tenant is: its counter, then the seats it holds (and `seats`
    more) per weight."""
    return (usage.counter, (usage.num_running + seats) / usage.weight)


class DeadlinePolicy(FairSharePolicy):
    """`fair` across tenants; within a tenant, lowest priority value first, then least slack
    (the latest time it can start and still be done by its deadline, at the measured step
    time: `DeadlineEstimator.latest_start`), then arrival order. Requests without a deadline
    come after those with one. A request that cannot finish by its deadline is ended early."""

    def __init__(self, deadlines: DeadlineEstimator) -> None:
        super().__init__()
        self.deadlines = deadlines
        self._keyed_at_step_time = deadlines.timer.seconds

    @property
    def predicts_deadlines(self) -> bool:
        return True

    def running_key(self, req: Request) -> tuple[object, ...]:
        usage = req.tenant_usage
        slack = self.deadlines.latest_start(req)
        return (usage.counter, req.tenant, req.priority, slack, req.arrival_seq)

    def _entry(self, req: Request) -> tuple[object, ...]:
        return (req.priority, self.deadlines.latest_start(req), req.arrival_seq, req)

    def order_running(self, running: list[Request]) -> None:
        super().order_running(running)
        # Waiting requests were placed at the step time of their arrival; place them again
        # once it has moved by a fifth, so slack is compared at one price.
        step_time = self.deadlines.timer.seconds
        if abs(step_time - self._keyed_at_step_time) > 0.2 * self._keyed_at_step_time:
            self._keyed_at_step_time = step_time
            for queue in self._queues.values():
                queue[:] = [self._entry(e[-1]) for e in queue if e[-1] in self._queued]
                heapq.heapify(queue)


def create_queue_policy(name: str, deadlines: DeadlineEstimator | None = None) -> QueuePolicy:
    if name == "fcfs":
        return FCFSPolicy()
    if name == "priority":
        return PriorityPolicy()
    if name == "fair":
        return FairSharePolicy()
    if name == "deadline":
        return DeadlinePolicy(deadlines if deadlines is not None else DeadlineEstimator(512))
    raise ValueError(f"queue_policy must be one of {', '.join(QUEUE_POLICIES)}, got {name!r}")
