"""`--metrics-url`: polls the server's Prometheus endpoint during a run, so the timeline shows
the server's own count of running and waiting requests next to what the client saw."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from dataclasses import dataclass, field

# Gauge name -> the field it fills; values are summed over labels (model, tenant).
GAUGES = {"loom:num_requests_running": "running", "loom:num_requests_waiting": "waiting"}


def parse_gauges(text: str) -> dict[str, float]:
    """{"running": n, "waiting": m} from Prometheus text exposition format."""
    values = dict.fromkeys(GAUGES.values(), 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in GAUGES:
            values[GAUGES[name]] += float(line.rsplit(" ", 1)[1])
    return values


def fetch_gauges(url: str, timeout: float = 2.0) -> dict[str, float]:
    return parse_gauges(fetch_text(url, timeout))


def fetch_text(url: str, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (user's URL)
        return response.read().decode()


def parse_series(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named series summed over its labels (0 for a series the text lacks)."""
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values


@dataclass(slots=True)
class ServerTimeline:
    times: list[float] = field(default_factory=list)  # seconds after the run started
    running: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)
    num_errors: int = 0  # polls that failed (the run goes on without them)


async def poll(url: str, run_start: float, stop: asyncio.Event, every_s: float) -> ServerTimeline:
    """Sample until `stop` is set; the blocking HTTP read runs off the event loop."""
    timeline = ServerTimeline()
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        try:
            values = await loop.run_in_executor(None, fetch_gauges, url)
        except (OSError, ValueError):
            timeline.num_errors += 1
        else:
            timeline.times.append(time.perf_counter() - run_start)
            timeline.running.append(values["running"])
            timeline.waiting.append(values["waiting"])
        with contextlib.suppress(asyncio.TimeoutError):  # the next sample is due
            await asyncio.wait_for(stop.wait(), timeout=every_s)
    return timeline
