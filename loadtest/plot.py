"""`--plot FILE.png`: latency distributions and a timeline of running and waiting requests.

matplotlib is an optional extra (`pip install loom[plot]`); nothing else needs it.
"""

from __future__ import annotations

from pathlib import Path

from loadtest.metrics import RequestResult
from loadtest.server_metrics import ServerTimeline


def client_timeline(results: list[RequestResult]) -> tuple[list[float], list[int], list[int]]:
    """Requests waiting (sent, no token yet) and running (streaming) after each event, as the
    client sees them. Returns (times, num_waiting, num_running) as step-function points."""
    # Each request moves sent -> first token -> done; one without a token goes sent -> done.
    events: list[tuple[float, int, int]] = []  # (time, change in waiting, change in running)
    for r in results:
        end = r.start_time + r.e2el
        if r.output_len > 0:
            first = r.start_time + r.ttft
            events += [(r.start_time, +1, 0), (first, -1, +1), (end, 0, -1)]
        else:
            events += [(r.start_time, +1, 0), (end, -1, 0)]
    # At equal times, finishes before first tokens before sends: a deterministic order.
    events.sort(key=lambda e: (e[0], e[1] + e[2]))
    times, waiting, running = [0.0], [0], [0]
    for t, d_wait, d_run in events:
        times.append(t)
        waiting.append(waiting[-1] + d_wait)
        running.append(running[-1] + d_run)
    return times, waiting, running


def save_plot(
    path: Path, results: list[RequestResult], title: str, server: ServerTimeline | None = None
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib: pip install 'loom[plot]'") from e

    done = [r for r in results if r.ok]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [
        (axes[0][0], "TTFT (ms)", [r.ttft * 1e3 for r in done]),
        (axes[0][1], "TPOT (ms)", [r.tpot * 1e3 for r in done if r.output_len > 1]),
        (axes[1][0], "ITL (ms)", [gap * 1e3 for r in done for gap in r.itls]),
    ]
    for ax, label, values in panels:
        ax.hist(values, bins=50)
        ax.set_xlabel(label)
        ax.set_ylabel("count")
    times, waiting, running = client_timeline(results)
    ax = axes[1][1]
    ax.step(times, running, where="post", label="client: streaming")
    ax.step(times, waiting, where="post", label="client: sent, no token yet")
    if server is not None and server.times:
        ax.plot(server.times, server.running, "--", label="server: running")
        ax.plot(server.times, server.waiting, "--", label="server: waiting")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("requests")
    ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
