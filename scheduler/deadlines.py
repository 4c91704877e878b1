"""Deadlines: how much time a request still needs, and which requests can no longer finish by
theirs.

A step runs each running request once, so what a request still needs is counted in steps and
priced at the measured step time (the median of the engine's last 16 step periods: one slow
step, a collection or a burst of arrivals, must not end requests that could still finish):

    steps = ceil(tokens left to compute / largest chunk) + tokens left to generate - 1

(the last prefill chunk samples the first token; each later step samples one more). A request
of 20 prompt tokens and max_tokens 8, none computed, chunks of 512, 5 ms steps: 1 + 8 - 1 = 8
steps, 40 ms. The tokens left to generate are those it is owed (`max_tokens` less what it has)
when ordering work; when deciding that a request cannot finish, only those it must generate
(all it is owed if only its length can end it, else one, or what `min_tokens` still asks):
a request that may stop at its next token is never given up for the tokens it might not need.

Every policy ends a request whose deadline has passed at the next step; the `deadline` policy
ends it as soon as its fastest finish (the fewest steps it needs, at the measured step time)
would be late, before it uses more compute. It predicts only while some request runs: the step
time is measured on running steps alone, so with nothing running an estimate too slow (steps
slowed by a burst of other work) would end every arrival before it ran, and no step would ever
measure it again.

A step's time grows with the requests in it (each row is sampled, detokenized and streamed), so
admitting one more request slows every running one. The timer also fits how the step time
moves with the rows of a step (`StepTimer`), prices steps at the batch now running, and the
`deadline` policy admits a waiting request only while the batch it makes, at the step time of
that many rows (and GROWTH_MARGIN more), still lets every running request and the newcomer
finish by its deadline (`BatchLimit`): with steps that cost per row, a batch grown past that
only makes requests late.

That limit alone lets the batch grow to what the long-deadline requests running allow, and at
that step time every tight-deadline arrival is ended at once. So the deadlines of recent
arrivals hold the batch too: it grows only to the step time at which ARRIVAL_SHARE of the
requests that arrived in the last ARRIVAL_WINDOW seconds could finish with ADMISSION_MARGIN to
spare (`RecentArrivals`), unless the request to admit cannot wait (its slowest step is under
URGENCY times that one). Long-deadline requests wait, their slack banked, while the tight ones
are served; they join as their slack runs low, or once the tight arrivals stop. The hold
applies only while the timer has read a cost per row: without one, a smaller batch is no
faster. With nothing running, the first waiting request is admitted unchecked (so the step
time is measured again), and the limits apply to the rest.
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from scheduler.request import Request, RequestStatus

# A waiting request that would take a seat another could use must finish with this share of
# its required time to spare: at one that merely fits, a step-time wobble after admission
# ends it halfway, its compute wasted and the seat denied to one that would have finished.
# 0.5: measured on a simulated overload (`python -m bench deadline-sim`, BENCHMARKS.md).
ADMISSION_MARGIN = 0.5
# A batch grows only while the step time at its new size leaves every running request (and the
# newcomer) this share of its required time to spare: the step time wobbles, and a batch grown
# to the last millisecond makes the tightest of them late. 0.1: measured on the simulated
# overload (`python -m bench deadline-sim`, BENCHMARKS.md).
GROWTH_MARGIN = 0.1
# Recent arrivals hold the batch (`RecentArrivals`): at the step time at which this share of
# the requests that arrived in the last ARRIVAL_WINDOW seconds could finish with
# ADMISSION_MARGIN to spare, unless the request to admit cannot wait: its slowest step is under
# URGENCY times that. Measured on the simulated overload (`python -m bench deadline-sim`, 3
# seeds), goodput at the `served` cost, 64 and 256 seats, 6 s and 12 s of arrivals, against
# 0.517, 0.511, 0.483, 0.469 without the hold: share 0.6, URGENCY 3: 0.561, 0.538, 0.554,
# 0.492; URGENCY 6: 0.557, 0.529, 0.536, 0.488; share 2/3, URGENCY 6: 0.585, 0.532, 0.541,
# 0.494, but at the `engine` cost, 256 seats, 0.505 and 0.423 against 0.524 and 0.446 (0.6
# and 3: 0.521, 0.443; within the seeds' noise); 5/6 lost everywhere. ARRIVAL_WINDOW 0.5, 1,
# 2 s (share 0.667, URGENCY 3, 64 seats, 6 s): 0.577, 0.592, 0.585.
ARRIVAL_SHARE = 0.6
ARRIVAL_WINDOW = 1.0
URGENCY = 3.0
RUNNING = RequestStatus.RUNNING


@dataclass(slots=True)
class StepTimer:
    """The step time, in seconds (0 until one is measured), at the batch of the last step: the
    median of the last `window` step periods, moved along `per_row`, the least-squares slope
    of step time on the requests a step ran over the last `fit_window` steps (each period
    clipped to 3x the median, so one stalled step barely tilts it). Until the rows have
    varied there is no slope, and the step time is the median; once read, a slope stands
    while the rows hold steady (a batch held at one size says nothing new about growing it)."""

    seconds: float = 0.0
    per_row: float = 0.0
    window: int = 16
    fit_window: int = 64
    _recent: deque[float] = field(default_factory=deque)
    _median: float = 0.0
    _recent_rows: deque[int] = field(default_factory=deque)
    _fit: deque[tuple[int, float]] = field(default_factory=deque)

    def observe(self, seconds: float, rows: int = 0) -> None:
        """A step's period and the requests it ran (0: not known)."""
        if seconds <= 0 or not math.isfinite(seconds):
            return
        _append(self._recent, seconds, self.window)
        self._median = statistics.median(self._recent)
        if rows > 0:
            _append(self._recent_rows, rows, self.window)
            _append(self._fit, (rows, min(seconds, 3 * self._median)), self.fit_window)
            slope = self._slope()
            if slope is not None:  # else the last slope read stands
                self.per_row = slope
        self.seconds = self.seconds_at(rows) if rows > 0 else self._median

    def seconds_at(self, rows: int) -> float:
        """The step time at `rows` requests a step."""
        if not self.per_row:
            return self._median
        moved = self.per_row * (rows - statistics.median(self._recent_rows))
        return max(self._median + moved, 0.1 * self._median)

    def _slope(self) -> float | None:
        fit = self._fit
        n = len(fit)
        if n < 8:
            return None
        mean_rows = sum(r for r, _ in fit) / n
        mean_seconds = sum(s for _, s in fit) / n
        var = sum((r - mean_rows) ** 2 for r, _ in fit)
        if var < n:  # rows spread by less than one request: no slope to read
            return None
        cov = sum((r - mean_rows) * (s - mean_seconds) for r, s in fit)
        return max(cov / var, 0.0)


def _append(window: deque, item: object, size: int) -> None:
    window.append(item)
    if len(window) > size:
        window.popleft()


class DeadlineEstimator:
    """`chunk`: the most prompt tokens a request computes in one step."""

    def __init__(self, chunk: int, timer: StepTimer | None = None) -> None:
        self.chunk = chunk
        self.timer = timer if timer is not None else StepTimer()

    @staticmethod
    def tokens_owed(req: Request) -> int:
        return max(req.params.max_tokens - len(req.output_token_ids), 1)

    @staticmethod
    def tokens_required(req: Request) -> int:
        """The fewest tokens it must still generate: with no end id and no stop string only
        its length ends it; otherwise the next token may, once `min_tokens` are out."""
        if not req.end_ids and not req.params.stop:
            return DeadlineEstimator.tokens_owed(req)
        return max(req.params.min_tokens - len(req.output_token_ids), 1)

    def steps_left(self, req: Request, num_tokens_to_generate: int) -> int:
        num_to_compute = max(req.num_tokens - req.num_computed_tokens, 1)
        return -(-num_to_compute // self.chunk) + num_tokens_to_generate - 1

    def time_owed(self, req: Request) -> float:
        """Seconds of steps to generate everything it is owed."""
        return self.steps_left(req, self.tokens_owed(req)) * self.timer.seconds

    def time_required(self, req: Request, margin: float = 0.0) -> float:
        """Seconds of steps it needs at the least (and `margin` of that more)."""
        return self.steps_left(req, self.tokens_required(req)) * self.timer.seconds * (1 + margin)

    def max_step_seconds(self, req: Request, now: float) -> float:
        """The slowest step at which its fewest steps still end by its deadline."""
        if req.deadline is None:
            return math.inf
        return (req.deadline - now) / self.steps_left(req, self.tokens_required(req))

    def latest_start(self, req: Request) -> float:
        """Its deadline less the time it is owed: the smaller, the less slack it has; a
        request without a deadline has all the slack there is."""
        if req.deadline is None:
            return math.inf
        return req.deadline - self.time_owed(req)

    def missed(
        self, req: Request, now: float, predict: bool, margin: float = 0.0
    ) -> str | None:
        """Why `req` can no longer finish by its deadline, or None while it can: the deadline
        has passed, or (`predict`) the fewest steps it needs (and `margin` more) would end
        after it."""
        deadline = req.deadline
        if deadline is None:
            return None
        if now >= deadline:
            return f"its deadline passed {(now - deadline) * 1e3:.0f} ms ago"
        if not predict:
            return None
        need = self.time_required(req, margin)
        if now + need <= deadline:
            return None
        steps = self.steps_left(req, self.tokens_required(req))
        spare = f" with {margin:.0%} to spare, every seat taken" if margin else ""
        return (
            f"{(deadline - now) * 1e3:.0f} ms left before its deadline, and it needs at least "
            f"{steps} steps of {self.timer.seconds * 1e3:.1f} ms{spare}"
        )


class RecentArrivals:
    """The slowest step each request that arrived in the last ARRIVAL_WINDOW seconds could
    take and still finish by its deadline with ADMISSION_MARGIN to spare (inf without one)."""

    def __init__(self, estimator: DeadlineEstimator) -> None:
        self.estimator = estimator
        self._recent: deque[tuple[float, float]] = deque()  # (arrived, slowest step)

    def add(self, req: Request, now: float) -> None:
        self._forget_before(now - ARRIVAL_WINDOW)  # nothing else may ask while none runs
        slowest = self.estimator.max_step_seconds(req, now) / (1 + ADMISSION_MARGIN)
        self._recent.append((now, slowest))

    def slowest_step(self, now: float) -> float:
        """The slowest step at which ARRIVAL_SHARE of the recent arrivals could finish."""
        self._forget_before(now - ARRIVAL_WINDOW)
        if not self._recent:
            return math.inf
        slowest = sorted(s for _, s in self._recent)
        return slowest[len(slowest) - math.ceil(ARRIVAL_SHARE * len(slowest))]

    def _forget_before(self, cutoff: float) -> None:
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()


class BatchLimit:
    """How far one step's batch may grow: a waiting request is admitted only if the step time
    at the batch with it (`StepTimer.seconds_at`) still lets the running requests and it finish
    by their deadlines, and stays within `arrivals_step` (`RecentArrivals.slowest_step`)."""

    def __init__(
        self,
        estimator: DeadlineEstimator,
        running: list[Request],
        now: float,
        arrivals_step: float = math.inf,
    ) -> None:
        self.estimator = estimator
        self.now = now
        self.arrivals_step = arrivals_step
        self.slowest_step = min(
            (estimator.max_step_seconds(r, now) for r in running), default=math.inf
        )

    def admits(self, req: Request, num_rows: int) -> bool:
        """Whether `req` may join a step of `num_rows` requests; if so, it counts from now."""
        slowest = min(self.slowest_step, self.estimator.max_step_seconds(req, self.now))
        step = self.estimator.timer.seconds_at(num_rows + 1)
        if step * (1 + GROWTH_MARGIN) > slowest:
            return False
        if step > self.arrivals_step and self.estimator.timer.per_row > 0:
            own = self.estimator.max_step_seconds(req, self.now)
            if own >= self.arrivals_step * URGENCY:
                return False
        self.slowest_step = slowest
        return True


class DeadlineWatch:
    """The requests with a deadline, by the time each may first be missed: its deadline, or
    (`predict`) its deadline less the time it requires. A heap, so a step looks only at the
    requests due, not at every one waiting.

    A key goes stale two ways. As a request runs, the time it requires shrinks and its true
    key moves later: popped early, it is checked and pushed back with a fresh key. As the step
    time grows, true keys move earlier: once it has grown by a tenth since the heap was keyed,
    every key is computed again. Finished requests are dropped as they come up."""

    def __init__(self, estimator: DeadlineEstimator, predict: bool) -> None:
        self.estimator = estimator
        self.predict = predict
        self._heap: list[tuple[float, int, Request]] = []
        self._order = itertools.count()  # ties never compare requests
        self._keyed_at_step_time = estimator.timer.seconds

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, req: Request) -> None:
        heapq.heappush(self._heap, (self._key(req), next(self._order), req))

    def due(
        self, now: float, predict: bool = True, contended: bool = False
    ) -> list[tuple[Request, str]]:
        """The unfinished requests that can no longer finish by their deadline, with why.
        `predict` False for this call: only those whose deadline has passed. `contended`:
        every seat is taken, so a request not running must finish with ADMISSION_MARGIN to
        spare."""
        predict = predict and self.predict
        step_time = self.estimator.timer.seconds
        if self.predict and step_time > 1.1 * self._keyed_at_step_time:
            self._keyed_at_step_time = step_time
            self._heap = [(self._key(r), n, r) for _, n, r in self._heap if not r.is_finished]
            heapq.heapify(self._heap)
        missed, again = [], []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, req = heapq.heappop(heap)
            if req.is_finished:
                continue
            margin = ADMISSION_MARGIN if contended and req.status is not RUNNING else 0.0
            why = self.estimator.missed(req, now, predict, margin)
            if why is None:
                again.append(req)
            else:
                missed.append((req, why))
        for req in again:
            self.add(req)
        return missed

    def _key(self, req: Request) -> float:
        assert req.deadline is not None
        if not self.predict:
            return req.deadline
        margin = ADMISSION_MARGIN if req.status is not RUNNING else 0.0
        return req.deadline - self.estimator.time_required(req, margin)
