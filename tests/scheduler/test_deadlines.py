"""Deadlines the scheduler knows, on a clock the test moves: a request that can no longer finish
by its deadline ends with DEADLINE_EXCEEDED before it uses more compute and never reaches the
worker again; the `deadline` policy orders a tenant's work by slack, within tenants' shares."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from scheduler.deadlines import StepTimer
from scheduler.request import Request, RequestStatus
from scheduler.scheduler import Scheduler
from tests.scheduler.helpers import (
    ContractWorker,
    make_request,
    make_scheduler,
    run_to_completion,
    step,
)

STEP = 0.010  # seconds: the step time the tests tell the scheduler it measured


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def timed_scheduler(policy: str, **config: object) -> tuple[Scheduler, Clock, ContractWorker]:
    clock = Clock()
    sched = make_scheduler(num_blocks=64, block_size=4, queue_policy=policy, **config)
    sched.clock = clock
    sched.observe_step_time(STEP)
    return sched, clock, ContractWorker(block_size=4)


def with_deadline(req: Request, clock: Clock, seconds: float, tenant: str = "default") -> Request:
    req.deadline = clock.now + seconds
    req.tenant = tenant
    return req


def timed_step(sched: Scheduler, worker: ContractWorker, clock: Clock):
    out = step(sched, worker)
    clock.now += STEP
    return out


def keep_busy(sched: Scheduler, worker: ContractWorker, clock: Clock) -> Request:
    """A request without a deadline, running: the engine is measuring its step time, so the
    `deadline` policy predicts (with nothing running it does not)."""
    busy = make_request("busy", 4, max_tokens=200, ignore_eos=True, first_token=300)
    sched.add_request(busy)
    timed_step(sched, worker, clock)
    return busy


def ever_sent(worker: ContractWorker, req_id: str, after: int) -> bool:
    return any(
        req_id in s.num_scheduled_tokens or any(n.req_id == req_id for n in s.new)
        for s in worker.steps[after:]
    )


@pytest.mark.parametrize("policy", ["fcfs", "fair", "priority"])
def test_once_its_deadline_passes_a_request_ends_and_never_reaches_the_worker_again(
    policy: str,
) -> None:
    sched, clock, worker = timed_scheduler(policy)
    late = with_deadline(make_request("late", 6, max_tokens=40, ignore_eos=True), clock, 0.05)
    other = make_request("other", 6, max_tokens=10, first_token=100)
    sched.add_request(late)
    sched.add_request(other)
    while clock.now < late.deadline:
        timed_step(sched, worker, clock)
    assert late.status is RequestStatus.RUNNING and late.block_ids
    num_sent = len(worker.steps)
    out, _ = timed_step(sched, worker, clock)
    assert out.ended == [late] and late.status is RequestStatus.FINISHED_DEADLINE
    assert late.finish_reason == "deadline" and "deadline passed" in late.error
    assert "late" not in out.step_input.num_scheduled_tokens
    assert out.step_input.finished_req_ids == ["late"]  # the worker drops it in this step
    run_to_completion(sched, worker)
    assert not ever_sent(worker, "late", num_sent)
    assert other.status is RequestStatus.FINISHED_LENGTH
    assert sched.kv.pool.num_free_blocks == 64
    usage = sched.tenant_usage["default"]
    assert (usage.num_deadlines_met, usage.num_deadlines_missed) == (0, 1)


def test_the_deadline_policy_ends_a_request_as_soon_as_its_fastest_finish_is_late() -> None:
    # 30 tokens to generate, EOS ignored: at least 30 steps of 10 ms. With 0.2 s left it can
    # never finish: it ends at once, before its prompt is computed. Under fcfs it would run
    # 20 steps and then end, its compute wasted.
    sched, clock, worker = timed_scheduler("deadline")
    keep_busy(sched, worker, clock)
    hopeless = with_deadline(make_request("h", 6, max_tokens=30, ignore_eos=True), clock, 0.2)
    feasible = with_deadline(
        make_request("f", 6, max_tokens=15, ignore_eos=True, first_token=100), clock, 0.2
    )
    sched.add_request(hopeless)
    sched.add_request(feasible)
    out, _ = timed_step(sched, worker, clock)
    assert out.ended == [hopeless] and not worker.requests.get("h")
    assert "needs at least 30 steps of 10.0 ms" in hopeless.error
    run_to_completion(sched, worker)
    assert not ever_sent(worker, "h", 0)
    assert feasible.status is RequestStatus.FINISHED_LENGTH
    usage = sched.tenant_usage["default"]
    assert (usage.num_deadlines_met, usage.num_deadlines_missed) == (1, 1)


def test_a_request_that_may_stop_at_its_next_token_is_not_ended_for_tokens_it_may_skip() -> None:
    # Without ignore_eos the next token may be EOS: one step can finish it, so 50 ms left is
    # enough to go on, whatever max_tokens says; min_tokens raises the floor.
    sched, clock, worker = timed_scheduler("deadline")
    keep_busy(sched, worker, clock)
    may_stop = with_deadline(make_request("m", 6, max_tokens=30), clock, 0.05)
    must_go_on = with_deadline(make_request("n", 6, max_tokens=30, min_tokens=8), clock, 0.05)
    sched.add_request(may_stop)
    sched.add_request(must_go_on)
    out, _ = timed_step(sched, worker, clock)
    assert out.ended == [must_go_on]
    assert may_stop.status is RequestStatus.RUNNING


def test_least_slack_first_within_a_tenant_and_no_deadline_last() -> None:
    # Slack = deadline - the steps it is owed x 10 ms. long: 1 s - 50 steps = 0.5 s; short:
    # 0.8 s - 5 steps = 0.75 s; urgent: 0.3 s - 10 steps = 0.2 s; none: no deadline.
    sched, clock, worker = timed_scheduler("deadline", max_num_seqs=1)
    none = make_request("none", 4, max_tokens=5, ignore_eos=True)
    long = with_deadline(make_request("long", 4, max_tokens=50, ignore_eos=True), clock, 1.0)
    short = with_deadline(make_request("short", 4, max_tokens=5, ignore_eos=True), clock, 0.8)
    urgent = with_deadline(make_request("urgent", 4, max_tokens=10, ignore_eos=True), clock, 0.3)
    for req in (none, long, short, urgent):
        sched.add_request(req)
    admitted = []
    while sched.has_unfinished():
        out, _ = timed_step(sched, worker, clock)
        admitted += [new.req_id for new in out.step_input.new]
    assert admitted == ["urgent", "long", "short", "none"]
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in (none, long, short, urgent))
    assert sched.tenant_usage["default"].num_deadlines_met == 3


def test_deadline_keeps_the_tenants_shares_urgency_orders_only_within_a_tenant() -> None:
    # Tenant a's requests all have tight deadlines, b's none: slack does not let a take b's
    # share; the tenants alternate as under `fair`.
    sched, clock, worker = timed_scheduler("deadline", max_num_seqs=1)
    for i in range(3):
        sched.add_request(
            with_deadline(make_request(f"a{i}", 4, max_tokens=2), clock, 5.0 + i, "a")
        )
        b = make_request(f"b{i}", 4, max_tokens=2, first_token=100)
        b.tenant = "b"
        sched.add_request(b)
    admitted = []
    while sched.has_unfinished():
        out, _ = timed_step(sched, worker, clock)
        admitted += [new.req_id for new in out.step_input.new]
    assert admitted == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_a_deadline_met_and_one_finished_late_are_counted_apart() -> None:
    sched, clock, worker = timed_scheduler("fcfs")
    met = with_deadline(make_request("met", 4, max_tokens=3), clock, 1.0, "t")
    sched.add_request(met)
    run_to_completion(sched, worker)
    # Finished by the step that began before the deadline and ended after it: late.
    late = with_deadline(make_request("late", 4, max_tokens=1, first_token=50), clock, 0.005, "t")
    sched.add_request(late)
    out = sched.schedule()
    clock.now += STEP
    sched.update(out, worker.execute(out.step_input))
    assert late.status is RequestStatus.FINISHED_LENGTH
    usage = sched.tenant_usage["t"]
    assert (usage.num_deadlines_met, usage.num_deadlines_missed) == (1, 1)


def test_a_request_is_ended_as_soon_as_slower_steps_make_it_late() -> None:
    # 50 steps at 10 ms fit in 1 s; once steps take 30 ms they do not, though the deadline is
    # far off: the next step ends it (the watch re-keys when the step time grows).
    sched, clock, worker = timed_scheduler("deadline")
    req = with_deadline(make_request("r", 4, max_tokens=50, ignore_eos=True), clock, 1.0)
    sched.add_request(req)
    timed_step(sched, worker, clock)
    assert req.status is RequestStatus.RUNNING
    for _ in range(20):
        sched.observe_step_time(0.030)
    out, _ = timed_step(sched, worker, clock)
    assert out.ended == [req] and "needs at least 49 steps of 30.0 ms" in req.error


def test_one_slow_step_ends_nothing() -> None:
    # A collection or a burst of arrivals stalls one step for 400 ms: priced at that, the
    # request (40 steps left, 0.9 s) would be given up; at the median of recent steps it is not.
    sched, clock, worker = timed_scheduler("deadline")
    req = with_deadline(make_request("r", 4, max_tokens=40, ignore_eos=True), clock, 0.9)
    sched.add_request(req)
    for _ in range(5):
        sched.observe_step_time(STEP)
    sched.observe_step_time(0.400)
    timed_step(sched, worker, clock)
    run_to_completion(sched, worker)
    assert req.status is RequestStatus.FINISHED_LENGTH


def test_with_nothing_running_an_arrival_is_tried_and_the_step_time_measured_again() -> None:
    # Steps measured at 200 ms (a burst of other work), then nothing runs. Priced at that, no
    # arrival (30 steps, 1 s) could finish: ending each before it ran, no step would ever
    # measure the true 10 ms again. With nothing running an arrival runs; once the steps it
    # runs are measured (as the engine measures each step), arrivals finish again.
    sched, clock, worker = timed_scheduler("deadline")
    for _ in range(16):
        sched.observe_step_time(0.200)
    outcomes = []
    for i in range(12):
        req = with_deadline(
            make_request(f"r{i}", 4, max_tokens=30, ignore_eos=True, first_token=10 * i),
            clock,
            1.0,
        )
        sched.add_request(req)
        out, _ = timed_step(sched, worker, clock)
        assert [new.req_id for new in out.step_input.new] == [req.req_id]
        while sched.has_unfinished():
            sched.observe_step_time(STEP)
            timed_step(sched, worker, clock)
        outcomes.append(req.status)
    assert outcomes[0] is RequestStatus.FINISHED_DEADLINE  # the stale estimate, once it ran
    assert outcomes[-1] is RequestStatus.FINISHED_LENGTH
    assert sched.kv.pool.num_free_blocks == 64


@pytest.mark.parametrize("seats", [1, 2])
def test_with_every_seat_taken_a_waiting_request_must_finish_with_time_to_spare(
    seats: int,
) -> None:
    # w needs 10 steps of 10 ms and has 130 ms. With a seat free it runs and is in time; with
    # every seat taken it would take one another could finish in, so it must have half its
    # 100 ms to spare, and ends at once.
    sched, clock, worker = timed_scheduler("deadline", max_num_seqs=seats)
    keep_busy(sched, worker, clock)
    w = with_deadline(make_request("w", 4, max_tokens=10, ignore_eos=True), clock, 0.13)
    sched.add_request(w)
    out, _ = timed_step(sched, worker, clock)
    if seats == 1:
        assert out.ended == [w] and "with 50% to spare, every seat taken" in w.error
        assert not ever_sent(worker, "w", 0)
    else:
        assert [new.req_id for new in out.step_input.new] == ["w"]
        while not w.is_finished:
            timed_step(sched, worker, clock)
        assert w.status is RequestStatus.FINISHED_LENGTH
        assert sched.tenant_usage["default"].num_deadlines_met == 1


def test_the_step_timer_reads_how_the_step_time_grows_with_the_rows() -> None:
    timer = StepTimer()
    for rows in [1, 2, 3, 4, 5, 6] * 4:
        timer.observe(0.002 + 0.004 * rows, rows)
    assert timer.per_row == pytest.approx(0.004)
    assert timer.seconds_at(10) == pytest.approx(0.042)
    assert timer.seconds == pytest.approx(0.026)  # at the last step's 6 rows
    timer.observe(0.400, 3)  # one stalled step (a collection): clipped, it barely tilts the fit
    assert timer.per_row == pytest.approx(0.004, rel=0.3)
    for _ in range(64):
        timer.observe(0.026, 6)  # a batch held at one size: the slope last read stands
    assert timer.per_row > 0.002 and timer.seconds_at(10) > timer.seconds_at(6)
    steady = StepTimer()
    for _ in range(20):
        steady.observe(0.010, 4)  # the rows never varied: no slope to read
    assert steady.per_row == 0.0 and steady.seconds_at(64) == steady.seconds == 0.010


def step_by_rows(sched: Scheduler, worker: ContractWorker, clock: Clock):
    """A step whose time is 2 ms + 4 ms per request in it, told to the scheduler as the engine
    tells it."""
    out = step(sched, worker)
    if out[0].scheduled:
        seconds = 0.002 + 0.004 * len(out[0].scheduled)
        clock.now += seconds
        sched.observe_step_time(seconds)
    return out


def test_the_deadline_policy_grows_a_batch_only_while_the_running_requests_stay_in_time() -> None:
    # Each request in a step costs 4 ms. `tight` alone runs 6 ms steps: 20 steps in 0.25 s fit.
    # Eight requests with 10 s to spare arrive; admitted at once (as there are seats for them)
    # the steps take 38 ms and `tight` misses by far. Under `deadline` the batch grows only as
    # far as `tight` can still finish with a tenth of its time to spare, and the rest follow.
    sched, clock, worker = timed_scheduler("deadline", max_num_seqs=16)
    for i in range(6):  # steps of 6 down to 1 requests: the timer reads the cost of a row
        sched.add_request(make_request(f"w{i}", 4, max_tokens=2 * i + 2, ignore_eos=True))
    while sched.has_unfinished():
        step_by_rows(sched, worker, clock)
    tight = with_deadline(make_request("tight", 4, max_tokens=20, ignore_eos=True), clock, 0.25)
    sched.add_request(tight)
    step_by_rows(sched, worker, clock)
    bulk = [
        with_deadline(make_request(f"b{i}", 4, max_tokens=20, ignore_eos=True), clock, 10.0)
        for i in range(8)
    ]
    for req in bulk:
        sched.add_request(req)
    widest = 0
    while not tight.is_finished:
        out, _ = step_by_rows(sched, worker, clock)
        widest = max(widest, len(out.scheduled))
    assert tight.status is RequestStatus.FINISHED_LENGTH and clock.now <= tight.deadline
    assert 1 < widest < 9  # it did grow, not past what `tight` could take
    run_to_completion(sched, worker)
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in bulk)
    assert sched.tenant_usage["default"].num_deadlines_met == 9
    assert sched.kv.pool.num_free_blocks == 64


def learn_the_cost_of_a_row(sched: Scheduler, worker: ContractWorker, clock: Clock) -> None:
    """Steps of 6 down to 1 requests, so the timer reads what a row costs (4 ms); then a
    second with nothing arriving, so these are no longer recent arrivals."""
    for i in range(6):
        sched.add_request(make_request(f"w{i}", 4, max_tokens=2 * i + 2, ignore_eos=True))
    while sched.has_unfinished():
        step_by_rows(sched, worker, clock)
    clock.now += 1.0


def tight_request(req_id: str, clock: Clock, first_token: int) -> Request:
    # 20 steps in 0.45 s: with half its time to spare a step may take 15 ms (3 rows); in
    # time at steps of at most 22 ms (5 rows).
    req = make_request(req_id, 4, max_tokens=20, ignore_eos=True, first_token=first_token)
    return with_deadline(req, clock, 0.45)


def run_tight_then_bulk(
    sched: Scheduler, worker: ContractWorker, clock: Clock, bulk_tokens: int = 20
) -> list[Request]:
    """Four tight requests arrive and finish; then five with 10 s to spare arrive."""
    tight = [tight_request(f"t{i}", clock, 20 * i) for i in range(4)]
    for req in tight:
        sched.add_request(req)
    while sched.has_unfinished():
        step_by_rows(sched, worker, clock)
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in tight)
    bulk = [
        with_deadline(
            make_request(f"b{i}", 4, max_tokens=bulk_tokens, ignore_eos=True, first_token=200 + i),
            clock,
            10.0,
        )
        for i in range(5)
    ]
    for req in bulk:
        sched.add_request(req)
    return bulk


def test_recent_tight_arrivals_hold_the_batch_at_the_size_they_need() -> None:
    # The running requests alone (10 s to spare) would let the batch take all five of them,
    # and the next tight arrival (20 steps in 0.45 s) could not join: at 6 rows, 26 ms steps.
    # The tight requests that arrived in the last second (4 of 9) hold it at the 3 rows they
    # need: the long ones wait, their slack banked, and the next tight one joins, in time.
    sched, clock, worker = timed_scheduler("deadline", max_num_seqs=16)
    learn_the_cost_of_a_row(sched, worker, clock)
    bulk = run_tight_then_bulk(sched, worker, clock)
    for _ in range(2):
        out, _ = step_by_rows(sched, worker, clock)
        assert len(out.scheduled) == 3
    late_tight = tight_request("t4", clock, 100)
    sched.add_request(late_tight)
    out, _ = step_by_rows(sched, worker, clock)
    assert "t4" in [new.req_id for new in out.step_input.new]
    assert len(out.scheduled) == 4  # past the hold: a tight request cannot wait
    while sched.has_unfinished():
        step_by_rows(sched, worker, clock)
    assert late_tight.status is RequestStatus.FINISHED_LENGTH
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in bulk)
    assert sched.tenant_usage["default"].num_deadlines_met == 10
    assert sched.kv.pool.num_free_blocks == 64


def test_the_hold_lifts_once_the_tight_arrivals_are_a_second_old() -> None:
    # The first three long requests run 60 steps of 14 ms; a second after the tight ones
    # arrived, before those end, the other two join them.
    sched, clock, worker = timed_scheduler("deadline", max_num_seqs=16)
    learn_the_cost_of_a_row(sched, worker, clock)
    bulk = run_tight_then_bulk(sched, worker, clock, bulk_tokens=60)
    widths = []
    while not all(r.is_finished for r in bulk):
        out, _ = step_by_rows(sched, worker, clock)
        widths.append(len(out.scheduled))
    assert widths[0] == 3 and max(widths) == 5
    assert all(r.status is RequestStatus.FINISHED_LENGTH for r in bulk)


def test_a_server_serving_one_request_at_a_time_keeps_only_the_last_seconds_arrivals() -> None:
    # With nothing running, no batch limit is built and nothing asks for the recent arrivals'
    # step: the arrivals must still be forgotten once they are a window old.
    sched, clock, worker = timed_scheduler("deadline")
    for i in range(50):
        sched.add_request(with_deadline(make_request(f"r{i}", 4, max_tokens=2), clock, 5.0))
        while sched.has_unfinished():
            timed_step(sched, worker, clock)
        clock.now += 2.0
    assert len(sched._arrivals._recent) <= 1
