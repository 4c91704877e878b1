"""The end-of-run table and the `--save-result` JSON document."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.metrics import LATENCY_METRICS, STATISTICS, RequestResult

_TITLES = {
    "ttft": "Time to First Token",
    "tpot": "Time per Output Token (excl. 1st token)",
    "itl": "Inter-token Latency",
    "e2el": "End-to-end Latency",
}
_WIDTH = 60


def _row(label: str, value: object) -> str:
    if isinstance(value, float):
        value = f"{value:.2f}"
    return f"{label:<42}{value!s:>18}"


def _heading(title: str, fill: str = "-") -> str:
    return f"{f' {title} ':{fill}^{_WIDTH}}"


def format_table(summary: dict[str, object], model_name: str) -> str:
    lines = [_heading(f"Serving Benchmark Result ({model_name})", "=")]
    lines.append(_row("Successful requests:", summary["completed"]))
    lines.append(_row("Failed requests:", summary["failed"]))
    for status, count in summary["failed_by_status"].items():
        lines.append(_row(f"  {status}:", count))
    lines.append(_row("Benchmark duration (s):", summary["duration"]))
    lines.append(_row("Total input tokens:", summary["total_input_tokens"]))
    lines.append(_row("Total generated tokens:", summary["total_output_tokens"]))
    lines.append(_row("Request throughput (req/s):", summary["request_throughput"]))
    if summary["request_goodput"] is not None:
        goals = " ".join(f"{k}<={v:g}ms" for k, v in summary["goodput_slos_ms"].items())
        lines.append(_row(f"Request goodput (req/s, {goals}):", summary["request_goodput"]))
    if "deadline_goodput" in summary:
        lines.append(_row("Deadlines met (requests):", summary["deadlines_met"]))
        lines.append(_row("Deadline goodput (share met):", summary["deadline_goodput"]))
    lines.append(_row("Output token throughput (tok/s):", summary["output_throughput"]))
    lines.append(_row("Total token throughput (tok/s):", summary["total_token_throughput"]))
    for name in LATENCY_METRICS:
        lines.append(_heading(_TITLES[name]))
        for stat in STATISTICS:
            label = f"{'Median' if stat == 'median' else stat.capitalize()} {name.upper()} (ms):"
            lines.append(_row(label, summary[f"{stat}_{name}_ms"]))
    lines.append("=" * _WIDTH)
    return "\n".join(lines)


def result_document(
    summary: dict[str, object],
    results: list[RequestResult],
    run_info: dict[str, object],
    tenants: dict[str, dict[str, float]],
) -> dict[str, object]:
    """Everything a later analysis needs: the run's settings, the summary, and per-request
    arrays aligned with the workload order (times in seconds, as `vllm bench serve` saves
    them; ttft is 0 and itls empty where no token arrived)."""
    ordered = sorted(results, key=lambda r: r.index)
    return {
        **run_info,
        **summary,
        "per_tenant": tenants,
        "input_lens": [r.prompt_len for r in ordered],
        "output_lens": [r.output_len for r in ordered],
        "start_times": [r.start_time for r in ordered],
        "ttfts": [r.ttft for r in ordered],
        "itls": [r.itls for r in ordered],
        "e2els": [r.e2el for r in ordered],
        "statuses": [r.status for r in ordered],
        "errors": [r.error for r in ordered],
        "tenants": [r.tenant for r in ordered],
        "cancel_planned": [r.cancel_planned for r in ordered],
        "deadlines_ms": [r.deadline_ms for r in ordered],
    }


def save_result(path: Path, document: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=1)
        f.write("\n")
